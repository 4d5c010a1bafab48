"""Few-shot contrastive fine-tuning (method "setfit", and an auto candidate for small classes):
SetFit's recipe (Tunstall et al., 2022) on a LoRA adapter of the split text backbone.

1. Pairs from the few examples: each of `iterations` rounds gives every training example one
   positive partner (same label, cosine target 1) and one negative partner (another label,
   target 0), drawn at random (SetFit's `sentence_pairs_generation`).
2. Contrastive fine-tuning: LoRA factors of the top layers (PEFT on the torch upper layers,
   as adapters/deep.py builds them, on hidden states the fp32 lower graph computed once per
   example) trained so that the pooled vectors' cosine matches the target (CosineSimilarityLoss:
   mean squared error), AdamW with warmup and linear decay, one epoch by default.
3. A head on the fine-tuned vectors: logistic regression (SetFit's default head), written as
   the linear head every version carries.

The version is a LoRA version (`method: "lora"`, the factors and a linear head): it serves
exactly as one, through the upper graph that takes each row's factors; `training.method`
says "setfit".
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from adapters.deep import TrainedDeep, _batches, _lora_state, _vectors, lora_model
from adapters.evaluation import evaluate
from adapters.training import Cancelled, EpochReport
from models.split import TARGETS, SplitShape

# Few-shot regime: auto plans the setfit candidate when a class has at most this many examples.
FEWSHOT_MAX_PER_CLASS = 32


@dataclass(frozen=True)
class SetFitParams:
    layers: int = 2  # top layers whose projections LoRA adapts (at most the split offers)
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS
    lr: float = 1e-3
    iterations: int = 20  # pair rounds: each gives every example one positive and one negative pair
    epochs: int = 1
    batch_size: int = 16  # pairs per step
    weight_decay: float = 0.01  # AdamW's (and the API's) default
    warmup_fraction: float = 0.1
    head_c: float = 1.0  # the logistic regression's inverse regularisation (scikit-learn's default)
    seed: int = 0


def pairs(y: np.ndarray, iterations: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(left, right, target): per round, every example with a random same-label partner (target 1)
    and a random other-label partner (target 0). Needs two classes and two examples a class."""
    counts = np.bincount(y)
    if (counts[counts > 0] < 2).any() or (counts > 0).sum() < 2:
        raise ValueError("setfit needs at least two classes and two training examples in each")
    by_class = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    others = {c: np.flatnonzero(y != c) for c in by_class}
    left, right, target = [], [], []
    for _ in range(iterations):
        for i, c in enumerate(y):
            same = by_class[c][by_class[c] != i]
            left += [i, i]
            right += [int(rng.choice(same)), int(rng.choice(others[c]))]
            target += [1.0, 0.0]
    return np.array(left), np.array(right), np.array(target, dtype=np.float32)


def fit_head(x: np.ndarray, y: np.ndarray, k: int, c: float, seed: int) -> dict[str, np.ndarray]:
    """Logistic regression on the vectors, as the linear head (weight (k, d), bias (k,)) serves it."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, max_iter=1000, random_state=seed).fit(x, y)
    w, b = model.coef_.astype(np.float32), model.intercept_.astype(np.float32)
    weight, bias = np.zeros((k, x.shape[1]), np.float32), np.zeros(k, np.float32)
    if len(model.classes_) == 2:  # one logit difference: split it between the two classes
        (lo, hi), w, b = model.classes_, w[0] / 2, b[0] / 2
        weight[lo], weight[hi], bias[lo], bias[hi] = -w, w, -b, b
    else:
        weight[model.classes_], bias[model.classes_] = w, b
        absent = np.setdiff1d(np.arange(k), model.classes_)
        bias[absent] = -1e4  # a label with no training example is never predicted
    return {"weight": weight, "bias": bias}


def train_setfit(upper: Any, shape: SplitShape, hidden_train: list[np.ndarray], y_train: np.ndarray,
                 hidden_val: list[np.ndarray], y_val: np.ndarray, labels: list[str], p: SetFitParams,
                 *, on_epoch: Callable[[EpochReport], bool] = lambda report: False,
                 stop: Callable[[], bool] = lambda: False) -> TrainedDeep:
    """Contrastive LoRA fine-tuning of `upper` (the torch upper layers, frozen) on pairs of the
    training examples, then a logistic-regression head on the adapted vectors. The validation
    rows are only reported on (`on_epoch`: the head fitted after each epoch); `stop()` is
    polled every step and `on_epoch` returning True stops too (Cancelled)."""
    import torch

    torch.manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    model = lora_model(upper, shape, p.layers, p.rank, p.alpha, p.targets, 0.0)
    params = [t for name, t in model.named_parameters() if "lora_" in name]
    optimizer = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
    left, right, target = pairs(y_train, p.iterations, rng)
    per_epoch = math.ceil(len(left) / p.batch_size)
    steps, warmup = per_epoch * p.epochs, max(1, int(per_epoch * p.epochs * p.warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (steps - s) / max(1, steps - warmup)))
    history: list[dict[str, float]] = []
    head: dict[str, np.ndarray] = {}
    for epoch in range(1, p.epochs + 1):
        model.train()
        order, total = rng.permutation(len(left)), 0.0
        for s in range(0, len(order), p.batch_size):
            if stop():
                raise Cancelled()
            batch = order[s : s + p.batch_size]
            rows, inverse = np.unique(np.concatenate([left[batch], right[batch]]), return_inverse=True)
            h, m = _batches(hidden_train, rows)  # each example of the batch through the layers once
            v = model(h, m)  # L2-normalised: the dot product is the cosine
            a, b = v[torch.from_numpy(inverse[: len(batch)])], v[torch.from_numpy(inverse[len(batch):])]
            loss = torch.nn.functional.mse_loss((a * b).sum(1), torch.from_numpy(target[batch]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        model.eval()
        head = fit_head(_vectors(model, hidden_train), y_train, len(labels), p.head_c, p.seed)
        point = {"epoch": epoch, "train_loss": total / len(left), "val_loss": float("nan"),
                 "val_macro_f1": float("nan")}
        if len(y_val):
            logits = _vectors(model, hidden_val) @ head["weight"].T + head["bias"]
            shifted = logits - logits.max(1, keepdims=True)
            nll = -(shifted[np.arange(len(y_val)), y_val] - np.log(np.exp(shifted).sum(1)))
            point |= {"val_loss": float(nll.mean()),
                      "val_macro_f1": evaluate(y_val, logits.argmax(1), labels)["macro_f1"]}
        history.append(point)
        if on_epoch(EpochReport(epoch, point["train_loss"], point["val_loss"], point["val_macro_f1"])):
            raise Cancelled()
    return TrainedDeep(_lora_state(model, shape), head, p.epochs, p.epochs, history)
