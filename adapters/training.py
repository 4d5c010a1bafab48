"""The Trainer: a small head on frozen embeddings, trained as transfer learning is done well.

AdamW with weight decay, dropout, linear warmup then cosine decay, class weights against
imbalance, early stopping on validation macro-F1 (the best epoch's weights are kept),
deterministic for a seed. The backbone never changes: the head sees embeddings only.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from adapters.evaluation import evaluate

HEADS = ("linear", "mlp")


@dataclass(frozen=True)
class TrainParams:
    head: str = "linear"
    hidden: int = 256
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 1e-2
    dropout: float = 0.1
    warmup_fraction: float = 0.1
    patience: int = 15
    val_fraction: float = 0.2
    seed: int = 0
    continual: bool = False
    augment: int = 0  # image backbones: augmented copies per training example (the worker makes them)
    standardize: bool = False  # train on per-dimension standardised features, folded back into the head

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    train_loss: float
    val_loss: float
    val_macro_f1: float


@dataclass(frozen=True)
class TrainedHead:
    tensors: dict[str, np.ndarray]
    best_epoch: int
    epochs_run: int
    stopped_early: bool
    val_metrics: dict[str, Any]


class Cancelled(Exception):
    """The job was cancelled between two epochs."""


def train_head(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
    labels: list[str], params: TrainParams,
    *, init: dict[str, np.ndarray] | None = None,
    on_epoch: Callable[[EpochReport], bool] = lambda report: False,
    keep_last: bool = False,
) -> TrainedHead:
    """Train; `on_epoch` returns True to cancel. Returns the best epoch's head, or with
    `keep_last` the last epoch's (a refit for an epoch count found earlier: no early stopping,
    the validation rows only reported on)."""
    import torch

    torch.manual_seed(params.seed)
    torch.use_deterministic_algorithms(True)
    generator = torch.Generator().manual_seed(params.seed)
    k, dim = len(labels), x_train.shape[1]
    model = _build(params, dim, k)
    shift, scale = np.zeros(dim, np.float32), np.ones(dim, np.float32)
    if params.standardize:
        # Features that share a direction (a CNN's non-negative pooled activations) differ
        # between classes in small per-dimension offsets; centring and scaling them lets a
        # few hundred optimiser steps find the head. The head stays one on raw features.
        shift = x_train.mean(0).astype(np.float32)
        scale = ((x_train.std(0) + 1e-3) * math.sqrt(dim)).astype(np.float32)
        x_train, x_val = (x_train - shift) / scale, (x_val - shift) / scale
    if init is not None:
        _load(model, params.head, _fold(init, params.head, shift, scale, inverse=True))
    xt, yt = torch.from_numpy(x_train.astype(np.float32)), torch.from_numpy(y_train.astype(np.int64))
    xv, yv = torch.from_numpy(x_val.astype(np.float32)), torch.from_numpy(y_val.astype(np.int64))
    counts = np.bincount(y_train, minlength=k).astype(np.float32)
    weights = torch.from_numpy(len(y_train) / (k * np.maximum(counts, 1)))
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(yt) / params.batch_size))
    total = steps_per_epoch * params.epochs
    warmup = max(1, int(total * params.warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (step + 1) / warmup if step < warmup
        else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))),
    )
    best = (-1.0, math.inf)  # (macro-F1, val loss)
    best_state, best_epoch, since_best, epoch = None, 0, 0, 0
    for epoch in range(1, params.epochs + 1):
        model.train()
        order = torch.randperm(len(yt), generator=generator)
        total_loss = 0.0
        for i in range(0, len(yt), params.batch_size):
            idx = order[i : i + params.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss) * len(idx)
        model.eval()
        with torch.no_grad():
            logits = model(xv)
            val_loss = float(loss_fn(logits, yv))
            f1 = evaluate(y_val, logits.argmax(1).numpy(), labels)["macro_f1"]
        if on_epoch(EpochReport(epoch, total_loss / len(yt), val_loss, f1)):
            raise Cancelled()
        # Patience counts epochs without a better macro-F1; at equal F1 a lower validation
        # loss still refreshes the kept weights (better calibrated), without resetting it.
        improved = f1 > best[0] + 1e-9
        if keep_last or improved or (f1 >= best[0] - 1e-9 and val_loss < best[1]):
            best, best_epoch = (max(f1, best[0]), val_loss), epoch
            best_state = {n: t.detach().clone() for n, t in model.state_dict().items()}
        since_best = 0 if improved else since_best + 1
        if since_best >= params.patience and not keep_last:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    tensors = _fold(_export(model, params.head), params.head, shift, scale)
    with torch.no_grad():
        val_pred = model(xv).argmax(1).numpy()
    return TrainedHead(tensors, best_epoch, epoch, epoch < params.epochs, evaluate(y_val, val_pred, labels))


def _build(params: TrainParams, dim: int, k: int):  # -> torch.nn.Module
    import torch

    if params.head == "linear":
        return torch.nn.Sequential(torch.nn.Dropout(params.dropout), torch.nn.Linear(dim, k))
    return torch.nn.Sequential(
        torch.nn.Dropout(params.dropout), torch.nn.Linear(dim, params.hidden), torch.nn.ReLU(),
        torch.nn.Dropout(params.dropout), torch.nn.Linear(params.hidden, k),
    )


def _linears(model) -> list:  # the Linear layers in order
    import torch

    return [m for m in model if isinstance(m, torch.nn.Linear)]


def _export(model, head: str) -> dict[str, np.ndarray]:
    layers = [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in _linears(model)]
    if head == "linear":
        return {"weight": layers[0][0], "bias": layers[0][1]}
    return {"w1": layers[0][0], "b1": layers[0][1], "w2": layers[1][0], "b2": layers[1][1]}


def _fold(tensors: dict[str, np.ndarray], head: str, shift: np.ndarray, scale: np.ndarray,
          inverse: bool = False) -> dict[str, np.ndarray]:
    """A head on standardised inputs (x - shift) / scale as the same head on raw x (or,
    inverse, a raw-input head as one on standardised inputs): only the first layer changes."""
    w, b = ("weight", "bias") if head == "linear" else ("w1", "b1")
    out = dict(tensors)
    if inverse:
        out[w] = (tensors[w] * scale).astype(np.float32)
        out[b] = (tensors[b] + tensors[w] @ shift).astype(np.float32)
    else:
        out[w] = (tensors[w] / scale).astype(np.float32)
        out[b] = (tensors[b] - out[w] @ shift).astype(np.float32)
    return out


def _load(model, head: str, tensors: dict[str, np.ndarray]) -> None:
    import torch

    names = [("weight", "bias")] if head == "linear" else [("w1", "b1"), ("w2", "b2")]
    with torch.no_grad():
        for layer, (w, b) in zip(_linears(model), names):
            layer.weight.copy_(torch.from_numpy(tensors[w]))
            layer.bias.copy_(torch.from_numpy(tensors[b]))


def continual_init(
    head: str, labels: list[str], active_labels: list[str], active_head: str,
    active_tensors: dict[str, np.ndarray], zero_shot_rows: np.ndarray,
) -> dict[str, np.ndarray] | None:
    """Start weights from the active version; labels it did not know start from zero-shot rows."""
    if head != active_head:
        return None
    index = {label: i for i, label in enumerate(active_labels)}
    out_w, out_b = ("weight", "bias") if head == "linear" else ("w2", "b2")
    old_w, old_b = active_tensors[out_w], active_tensors[out_b]
    rows, bias = [], []
    for j, label in enumerate(labels):
        if label in index:
            rows.append(old_w[index[label]])
            bias.append(old_b[index[label]])
        elif head == "linear":
            rows.append(zero_shot_rows[j])
            bias.append(0.0)
        else:
            rows.append(np.zeros(old_w.shape[1], dtype=np.float32))
            bias.append(0.0)
    init = dict(active_tensors)
    init[out_w] = np.stack(rows).astype(np.float32)
    init[out_b] = np.array(bias, dtype=np.float32)
    return init
