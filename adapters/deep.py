"""Deep adapters on a split text backbone (models/split.py), trained in torch on hidden
states the fp32 lower graph computed once per example (SplitRunner.training_lower): LoRA
on the top layers (PEFT), or the top layers unfrozen (method unfreeze: all their weights train).

Recipe (LP-FT), shared by both methods (`_fit`): a linear head is first fitted on the frozen
upper layers' vectors, then the trainable weights of the top layers and the head are trained
together with AdamW, warmup and cosine decay, class weights, discriminative learning rates
(each lower layer learns `layer_decay` times slower than the layer above; the head, which
starts from the probe, at its own rate), optional gradual unfreezing, and early stopping on
validation macro-F1. The methods differ only in what trains and what leaves: LoRA factors
as (A, B) pairs with the scale folded into B (what the upper graph takes per row), or the
unfrozen layers' weights (what the upper_weights graph takes per adapter).

Image backbones (models/image_split.py) train method unfreeze through the same loop: their
lower feature maps are the cached "hidden states" ((positions, channels) each, no padding),
their units MBConv blocks, and the head conv (always trained with them) the top unit.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from adapters.evaluation import evaluate
from adapters.training import Cancelled, EpochReport, TrainParams, train_head
from models.split import TARGETS, LoraFactors, SplitShape, UnfrozenLayers

MAX_RANK = 64
BUCKET_MIN_EXAMPLES = 1000  # smaller training sets keep plain random batches (DeepParams.bucket)


@dataclass(frozen=True)
class DeepParams:
    """The shared training loop's knobs."""

    layers: int = 2  # top layers trained (at most the backbone's split offers)
    lr: float = 2e-3  # the top layer's weights
    layer_decay: float = 0.8  # discriminative learning rates: each layer below learns this much slower
    head_lr: float = 1e-3  # the probe's head moves slowly (1e-2 undid it: LP-FT)
    epochs: int = 4
    batch_size: int = 16
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    patience: int = 3  # validation F1 dips for an epoch or two before the top layers pay off
    seed: int = 0
    gradual_unfreeze: bool = False  # epoch 1 trains the top layer, each epoch one layer more
    # The linear probe on standardised vectors, folded back into its weights (adapters/training.py),
    # as image heads train by default: on MNIST digits (10 a class) the probe on raw image
    # vectors started the unfreeze loop far below a head-only adapter.
    probe_standardize: bool = False
    # Batches sorted by length within runs of this many, then shuffled (1: plain random batches),
    # for training sets of BUCKET_MIN_EXAMPLES or more. On 2,000 reviews 8 cut LoRA's training
    # from 66 s to 54 s at the same macro-F1 (0.768 -> 0.777); sorting whole epochs had lost 0.5
    # point there, and on small sets (the XOR test task, 128 examples: one run of 8 batches)
    # it stopped training from beating the probe.
    bucket: int = 8


@dataclass(frozen=True)
class LoraParams(DeepParams):
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = TARGETS
    dropout: float = 0.0  # LoRA dropout (0.1 cost 1.5 points of macro-F1 on reviews)


@dataclass(frozen=True)
class UnfreezeParams(DeepParams):
    # Full fine-tuning of a whole BERT-like model takes 2e-5..5e-5 over thousands of steps.
    # Here only the top layers train, on few steps for small sets: measured on the XOR set
    # (128 training examples, 4 epochs, 2 layers; held-out accuracy) 1e-5: 0.55, 3e-5: 0.60,
    # 1e-4: 0.73, 3e-4: 0.96, 1e-3: 0.99, but 1e-3 broke the tickets set (validation macro-F1
    # 1.0 -> 0.56 after one epoch). 1e-4 for the top layer: tenants with much data (what
    # unfreeze is for) get many steps; small sets do better with lr 3e-4 or more epochs.
    lr: float = 1e-4


# Method unfreeze on an image backbone (the last blocks and the head conv): its own defaults.
# Measured on MNIST digits, 100 a class (800 train, 200 validation), the last block: lr 1e-4
# or 3e-4 never beat the linear probe on validation (the probe alone was kept: test macro-F1
# 0.938); lr 1e-3 over 8 epochs peaked at epoch 4 (0.943). Patience 8: with 3, the run stopped
# before the epoch that paid off.
IMAGE_UNFREEZE_DEFAULTS: dict[str, Any] = {"lr": 1e-3, "epochs": 8, "patience": 8}


@dataclass
class TrainedDeep:
    weights: Any  # LoraFactors or UnfrozenLayers: what the serving graph takes for the adapter's rows
    head: dict[str, np.ndarray]
    epochs_run: int
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)


def _batches(hidden: list[np.ndarray], idx: np.ndarray) -> tuple[Any, Any]:
    """Pad the rows' hidden states (T_i, H) to one (B, T, H) tensor and its 0/1 mask."""
    import torch

    width = max(hidden[i].shape[0] for i in idx)
    h = np.zeros((len(idx), width, hidden[idx[0]].shape[1]), dtype=np.float32)
    m = np.zeros((len(idx), width), dtype=np.int64)
    for row, i in enumerate(idx):
        h[row, : hidden[i].shape[0]] = hidden[i]  # float16 kept, float32 computed
        m[row, : hidden[i].shape[0]] = 1
    return torch.from_numpy(h), torch.from_numpy(m)


def _vectors(upper: Any, hidden: list[np.ndarray], batch: int = 64) -> np.ndarray:
    import torch

    order = np.argsort([len(h) for h in hidden], kind="stable")  # batches of similar lengths pad little
    out = np.empty((len(hidden), 0), dtype=np.float32)
    with torch.no_grad():
        for i in range(0, len(hidden), batch):
            rows = order[i : i + batch]
            h, m = _batches(hidden, rows)
            vectors = upper(h, m).numpy()
            if not out.shape[1]:
                out = np.empty((len(hidden), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors
    return out


def _probe(upper: Any, hidden_train: list[np.ndarray], y_train: np.ndarray, hidden_val: list[np.ndarray],
           y_val: np.ndarray, labels: list[str], seed: int, standardize: bool = False) -> dict[str, np.ndarray]:
    """Linear probe first: the head starts where a head-only adapter on these layers ends."""
    x_train, x_val = _vectors(upper, hidden_train), _vectors(upper, hidden_val)
    return train_head(x_train, y_train, x_val, y_val, labels,
                      TrainParams(seed=seed, patience=10, standardize=standardize)).tensors


def train_lora(
    upper: Any, shape: SplitShape, hidden_train: list[np.ndarray], y_train: np.ndarray,
    hidden_val: list[np.ndarray], y_val: np.ndarray, labels: list[str], p: LoraParams,
    *, on_epoch: Callable[[EpochReport], bool] = lambda report: False,
    head_init: dict[str, np.ndarray] | None = None, factors_init: LoraFactors | None = None,
) -> TrainedDeep:
    """Train LoRA factors for `upper` (the torch upper layers, frozen) and a linear head;
    continual training starts from `head_init` (else a linear probe) and `factors_init`."""
    import torch

    torch.manual_seed(p.seed)
    if head_init is None:
        head_init = _probe(upper, hidden_train, y_train, hidden_val, y_val, labels, p.seed, p.probe_standardize)
    n = len(shape.upper_layers)
    model = lora_model(upper, shape, p.layers, p.rank, p.alpha, p.targets, p.dropout)
    if factors_init is not None:
        with torch.no_grad():
            _load_factors(model, shape, factors_init)
    layer_params = [[t for name, t in model.named_parameters() if "lora_" in name and f"layers.{i}." in name]
                    for i in range(n)]
    return _fit(model, layer_params, shape, hidden_train, y_train, hidden_val, y_val, labels, p, head_init,
                on_epoch, lambda: _lora_state(model, shape))


def lora_model(upper: Any, shape: SplitShape, layers: int, rank: int, alpha: float, targets: tuple[str, ...],
               dropout: float) -> Any:
    """`upper` (the torch upper layers, frozen) with PEFT LoRA on `targets` of its top `layers` layers."""
    from peft import LoraConfig, get_peft_model

    n = len(shape.upper_layers)
    adapted = "|".join(str(i) for i in range(n - layers, n))  # the top layers of the upper graph
    pattern = rf"layers\.({adapted})\.(" + "|".join(re.escape(t) for t in targets) + r")"
    return get_peft_model(upper, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                            target_modules=pattern, bias="none"))


def train_unfreeze(
    upper: Any, shape: SplitShape, hidden_train: list[np.ndarray], y_train: np.ndarray,
    hidden_val: list[np.ndarray], y_val: np.ndarray, labels: list[str], p: UnfreezeParams,
    *, on_epoch: Callable[[EpochReport], bool] = lambda report: False,
    head_init: dict[str, np.ndarray] | None = None, weights_init: UnfrozenLayers | None = None,
) -> TrainedDeep:
    """Train every weight of the top `p.layers` layers of `upper` (the torch upper layers,
    pretrained; those below stay frozen) and a linear head; continual training starts from
    `head_init` (else a linear probe) and `weights_init`."""
    import torch

    torch.manual_seed(p.seed)
    if head_init is None:
        head_init = _probe(upper, hidden_train, y_train, hidden_val, y_val, labels, p.seed, p.probe_standardize)
    if weights_init is not None:
        with torch.no_grad():
            for name, w in weights_init.weights.items():
                layer, path = name.split(".", 1)
                upper.layers[int(layer) - shape.split].get_parameter(path).copy_(torch.from_numpy(w))
    trained = set(shape.unfrozen_units(p.layers))  # text: the top layers; image: the top blocks and the head conv
    layer_params = [list(module.parameters()) if unit in trained else []
                    for unit, module in zip(shape.upper_layers, upper.layers)]
    return _fit(upper, layer_params, shape, hidden_train, y_train, hidden_val, y_val, labels, p, head_init,
                on_epoch, lambda: _unfrozen_state(upper, shape, p.layers))


def _fit(model: Any, layer_params: list[list[Any]], shape: SplitShape, hidden_train: list[np.ndarray],
         y_train: np.ndarray, hidden_val: list[np.ndarray], y_val: np.ndarray, labels: list[str],
         p: DeepParams, head_init: dict[str, np.ndarray], on_epoch: Callable[[EpochReport], bool],
         extract: Callable[[], Any]) -> TrainedDeep:
    """The loop both methods share: `model(h, mask)` gives the pooled vectors, `layer_params[i]`
    are upper layer i's trainable tensors (empty: frozen), `extract()` their serving form."""
    import torch

    k = len(labels)
    head = torch.nn.Linear(shape.hidden, k)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(head_init["weight"]))
        head.bias.copy_(torch.from_numpy(head_init["bias"]))
    groups: list[dict[str, Any]] = [{"params": list(head.parameters()), "lr": p.head_lr}]
    top = len(layer_params) - 1
    groups += [{"params": params, "lr": p.lr * p.layer_decay ** (top - i)} for i, params in enumerate(layer_params)]
    optimizer = torch.optim.AdamW(groups, weight_decay=p.weight_decay)
    steps = max(1, math.ceil(len(y_train) / p.batch_size)) * p.epochs
    warmup = max(1, int(steps * p.warmup_fraction))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup
        else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup))))
    counts = np.bincount(y_train, minlength=k).astype(np.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=torch.from_numpy(len(y_train) / (k * np.maximum(counts, 1))))
    generator = np.random.default_rng(p.seed)
    yt = torch.from_numpy(y_train.astype(np.int64))

    def evaluate_val() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            logits = head(torch.from_numpy(_vectors(model, hidden_val)))
            loss = float(loss_fn(logits, torch.from_numpy(y_val.astype(np.int64))))
        return evaluate(y_val, logits.argmax(1).numpy(), labels)["macro_f1"], loss

    best_f1, _ = evaluate_val()
    best_state = extract(), _head_state(head)  # the probe alone, if no epoch beats it
    best_epoch, since, history, epoch = 0, 0, [], 0
    for epoch in range(1, p.epochs + 1):
        trainable = unfrozen(epoch, len(layer_params), p.gradual_unfreeze)
        for i, params in enumerate(layer_params):
            for t in params:
                t.requires_grad_(i in trainable)
        model.train()
        total = 0.0
        for idx in _epoch_batches(generator, [len(h) for h in hidden_train], p.batch_size, p.bucket):
            h, m = _batches(hidden_train, idx)
            optimizer.zero_grad()
            loss = loss_fn(head(model(h, m)), yt[idx])
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss) * len(idx)
        f1, val_loss = evaluate_val()
        history.append({"epoch": epoch, "train_loss": total / len(y_train), "val_loss": val_loss, "val_macro_f1": f1})
        if on_epoch(EpochReport(epoch, total / len(y_train), val_loss, f1)):
            raise Cancelled()
        if f1 > best_f1 + 1e-9:
            best_f1, best_epoch, since = f1, epoch, 0
            best_state = extract(), _head_state(head)
        else:
            since += 1
            if since >= p.patience:
                break
    weights, head_tensors = best_state
    return TrainedDeep(weights, head_tensors, epoch, best_epoch, history)


def _epoch_batches(generator: Any, lengths: list[int], batch_size: int, bucket: int) -> list[np.ndarray]:
    """One epoch's batches: a random order; with `bucket` > 1 (and BUCKET_MIN_EXAMPLES or more),
    each run of `bucket` batches of it sorted by length before it is cut (less padding, batches
    still random across runs), and the batches shuffled."""
    order = generator.permutation(len(lengths))
    bucket = bucket if len(lengths) >= BUCKET_MIN_EXAMPLES else 1  # small sets train fast anyway
    if bucket > 1:
        window = batch_size * bucket
        order = np.concatenate([sorted(order[i : i + window], key=lambda j: lengths[j])
                                for i in range(0, len(order), window)]).astype(np.int64)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if bucket > 1:
        batches = [batches[i] for i in generator.permutation(len(batches))]
    return batches


def unfrozen(epoch: int, layers: int, gradual: bool) -> set[int]:
    """Which upper layers' factors train in `epoch` (1-based; layer 0 is the lowest adapted):
    all of them, or with gradual unfreezing (ULMFiT) the top one first and one more each epoch."""
    if not gradual:
        return set(range(layers))
    return set(range(max(0, layers - epoch), layers))


def _lora_modules(model: Any, shape: SplitShape) -> dict[str, Any]:
    """PEFT's LoRA layers by "<absolute layer>.<target>"."""
    out = {}
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in getattr(module, "lora_A", {}):
            continue
        match = re.search(r"layers\.(\d+)\.(.+)$", name)
        assert match is not None, name
        out[f"{shape.split + int(match.group(1))}.{match.group(2)}"] = module
    return out


def _load_factors(model: Any, shape: SplitShape, factors: LoraFactors) -> None:
    """Start from an earlier version's factors (the inverse of `_state`)."""
    import torch

    for key, module in _lora_modules(model, shape).items():
        if key in factors.factors:
            a, b = factors.factors[key]
            module.lora_A["default"].weight.copy_(torch.from_numpy(a.T.copy()))
            module.lora_B["default"].weight.copy_(torch.from_numpy((b / module.scaling["default"]).T.copy()))


def _head_state(head: Any) -> dict[str, np.ndarray]:
    return {"weight": head.weight.detach().numpy().copy(), "bias": head.bias.detach().numpy().copy()}


def _lora_state(model: Any, shape: SplitShape) -> LoraFactors:
    """The factors as the upper graph takes them: A = W_A^T, B = W_B^T · scale."""
    factors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for key, module in _lora_modules(model, shape).items():
        a = module.lora_A["default"].weight.detach().numpy().T.copy()
        b = (module.lora_B["default"].weight.detach().numpy().T * module.scaling["default"]).copy()
        factors[key] = (a.astype(np.float32), b.astype(np.float32))
    return LoraFactors(factors)


def _state(model: Any, head: Any, shape: SplitShape) -> tuple[LoraFactors, dict[str, np.ndarray]]:
    return _lora_state(model, shape), _head_state(head)


def _unfrozen_state(upper: Any, shape: SplitShape, layers: int) -> UnfrozenLayers:
    """The top `layers` layers' weights (image: blocks, and the head conv) as the
    upper_weights graph takes them."""
    return UnfrozenLayers({f"{unit}.{path}": t.detach().numpy().astype(np.float32, copy=True)
                           for unit in shape.unfrozen_units(layers)
                           for path, t in upper.layers[unit - shape.split].named_parameters()})
