"""The fine-tune pipeline: labeled examples in, an evaluated adapter version and a promotion
decision out. No server, no database: the caller hands in the backbone, the active version
(if any), an embedding cache and a reporter, and publishes the result itself.

Steps: validate -> embed (cached) -> stratified split -> (image augmentation) -> baselines
(majority, zero-shot or class prototypes, the active version) -> (continual init) -> train
the head with early stopping -> evaluate -> negative-transfer guard decides promotion.
"""
from __future__ import annotations

import base64
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import numpy as np

from adapters import calibration, zero_shot
from adapters import card as cards
from adapters.evaluation import evaluate, stratified_split
from adapters.format import Adapter, AdapterConfig, deep_tensors, encode
from adapters.deep import IMAGE_UNFREEZE_DEFAULTS, DeepParams, LoraParams, UnfreezeParams, train_lora, train_unfreeze
from adapters.fewshot import SetFitParams, train_setfit
from adapters.lexical import LEXICAL_METHODS, LexicalParams, train_lexical
from adapters.training import Cancelled, EpochReport, TrainParams, continual_init, train_head
from models import Backbone
from models.split import TARGET_NAMES
from models.base import ItemError


TRAIN_FIELDS = {f.name for f in fields(TrainParams)}
# Trained on hidden states of a split text backbone (adapters/deep.py; setfit: adapters/fewshot.py).
DEEP_METHODS = ("lora", "unfreeze", "setfit")


class HiddenStateCache(Protocol):
    """One tenant's hidden states of already-seen texts per `TextBackbone.hidden_key`: each
    (token count, float16 bytes of the (tokens, hidden) array)."""

    def cached_hidden_states(self, key: str, keys: list[str]) -> dict[str, tuple[int, bytes]]: ...

    def store_hidden_states(self, key: str, states: dict[str, tuple[int, bytes]]) -> None: ...


class EmbeddingCache(HiddenStateCache, Protocol):
    """One tenant's vectors of already-embedded items (text or base64 image) per backbone
    fingerprint, and its hidden states for deep adapters (JobQueue.embedding_cache)."""

    def cached_embeddings(self, fingerprint: str, keys: list[str]) -> dict[str, bytes]: ...

    def store_embeddings(self, fingerprint: str, vectors: dict[str, bytes]) -> None: ...


class Reporter(Protocol):
    """Where the pipeline reports to (the job's events and progress) and learns of a cancel."""

    def event(self, kind: str, data: dict[str, Any]) -> None: ...

    def progress(self, fraction: float) -> None: ...

    def cancelled(self) -> bool: ...


@dataclass(frozen=True)
class Outcome:
    """An evaluated version, ready to publish, and what to do with it."""

    config: AdapterConfig
    weights: bytes
    metrics: dict[str, Any]
    promote: bool
    reason: str
    baseline_version: int | None  # the active version the decision was made against


def train_version(examples: list[dict[str, str]], backbone: Backbone, params: dict[str, Any], *,
                  active: Adapter | None, cache: EmbeddingCache, report: Reporter,
                  promote_margin: float, job_id: str = "", max_unfreeze_bytes: int | None = None) -> Outcome:
    """`max_unfreeze_bytes`: the largest unfreeze adapter allowed (GRAFT_MAX_UNFREEZE_BYTES; the
    API checks it at submit, the worker again, in case its settings differ).
    No method (or "auto"): adapters/auto.py tries the candidates and keeps the winner."""
    if params.get("method") in (None, "auto"):
        from adapters.auto import train_auto

        return train_auto(examples, backbone, params, active=active, cache=cache, report=report,
                          promote_margin=promote_margin, job_id=job_id, max_unfreeze_bytes=max_unfreeze_bytes)
    # Training knobs only: the job's other params (keep_examples) are the queue's business.
    settings = {k: v for k, v in params.items() if v is not None and k in TRAIN_FIELDS}
    p = TrainParams(**{"standardize": backbone.kind == "image", **settings})
    keys, labels, y, data, where = read_examples(examples, report)
    train_idx, val_idx = stratified_split(y, p.val_fraction, p.seed)
    report.event("split", {"train": len(train_idx), "validation": len(val_idx), "seed": p.seed})
    deep = params.get("method") in DEEP_METHODS
    if params.get("method") in LEXICAL_METHODS and backbone.kind != "text":
        raise InvalidParams(f"method {params['method']} reads texts; {backbone.id!r} is an image backbone")
    # Deep methods train on hidden states, lexical on the texts alone: only the validation
    # rows need vectors (for the baselines).
    needed = val_idx if deep or params.get("method") == "lexical" else np.arange(len(keys))
    x = np.zeros((len(keys), backbone.dim), dtype=np.float32)
    x[needed] = embed_cached(backbone, [keys[i] for i in needed], cache, report, where)
    x_train, y_train = x[train_idx], y[train_idx]
    if p.augment and backbone.kind == "image" and not deep:  # deep: augmented feature maps (_train_deep)
        x_aug, y_aug = augmented(backbone, [keys[i] for i in train_idx], y_train, p, report)
        x_train, y_train = np.concatenate([x_train, x_aug]), np.concatenate([y_train, y_aug])
        report.event("augmentation", {"copies": p.augment, "train": len(y_train)})

    reference, zs_tensors = reference_head(backbone, labels, x[train_idx], y[train_idx])
    x_val, y_val = x[val_idx], y[val_idx]
    baselines = {
        "majority": evaluate(y_val, np.full(len(y_val), np.bincount(y[train_idx]).argmax()), labels),
        reference: evaluate(y_val, _predict(zs_tensors, "linear", x_val), labels),
    }
    if active is not None:
        index = {label: i for i, label in enumerate(labels)}
        active_x = x_val if active.deep is None else backbone.embed_deep(  # type: ignore[attr-defined]
            _items(backbone, [keys[i] for i in val_idx], where), [active.deep] * len(val_idx)).vectors
        active_pred = active.predict_proba(active_x, [keys[i] for i in val_idx] if active.needs_text else None).argmax(1)
        baselines["active"] = evaluate(y_val, np.array([index.get(active.labels[q], -1) for q in active_pred]), labels)
        baselines["active"]["version"] = active.version
    # Label changes are never silent: said here, in the evaluation, and a dropped label
    # blocks the promotion unless params.allow_dropped_labels (decide).
    changes = cards.label_changes(labels, active.labels if active else None, active.version if active else None)
    if changes and (changes["added"] or changes["dropped"]):
        report.event("labels_changed", changes)
    conclude = Conclusion(data=data, changes=changes, baselines=baselines, params=params, labels=labels,
                          y_val=y[val_idx], groups=[examples[i].get("group") for i in val_idx],
                          licence=getattr(backbone, "licence", "unknown"), report=report,
                          promote_margin=promote_margin)
    init = None
    if p.continual and active is not None and not active.needs_text:  # a lexical head reads no vector
        init = continual_init("linear" if deep else p.head, labels, active.labels, active.config.head,
                              active.tensors, zs_tensors["weight"])
    if deep:
        return _train_deep(backbone, params, keys, y, labels, train_idx, val_idx, baselines, active,
                           init if p.continual else None, cache=cache,
                           report=report, promote_margin=promote_margin, job_id=job_id,
                           max_unfreeze_bytes=max_unfreeze_bytes, conclude=conclude, where=where)
    if params.get("method") in LEXICAL_METHODS:
        return _train_lexical(backbone, params, keys, x, y, labels, train_idx, val_idx, active,
                              report=report, job_id=job_id, conclude=conclude)

    started = time.perf_counter()

    def on_epoch(r: EpochReport) -> bool:
        conclude.epoch(r)
        report.progress(0.2 + 0.75 * r.epoch / p.epochs)
        report.event("epoch", {"epoch": r.epoch, "train_loss": round(r.train_loss, 5),
                               "val_loss": round(r.val_loss, 5), "val_macro_f1": round(r.val_macro_f1, 4)})
        return report.cancelled()

    trained = train_head(x_train, y_train, x_val, y_val, labels, p, init=init, on_epoch=on_epoch)
    if trained.stopped_early:
        report.event("early_stop", {"epoch": trained.epochs_run, "best_epoch": trained.best_epoch,
                                    "patience": p.patience})
    probe = Adapter(AdapterConfig(backbone="", fingerprint="", dim=backbone.dim, head=p.head, labels=labels),
                    trained.tensors)
    metrics, temperature, card, promote, reason = conclude.finish(
        trained.val_metrics, probe.logits(x_val),
        {"method": "head", "head": p.head, "seconds": time.perf_counter() - started})
    config = AdapterConfig(
        backbone=backbone.id, fingerprint=backbone.fingerprint, dim=backbone.dim, head=p.head,
        labels=labels, metrics=metrics, temperature=temperature, card=card,
        training={"method": "fine-tune", "job_id": job_id, "params": p.as_dict(),
                  "examples": len(keys), "train": len(train_idx), "validation": len(val_idx),
                  "epochs_run": trained.epochs_run, "best_epoch": trained.best_epoch,
                  "continual_from": active.version if init is not None and active else None},
        parent_version=active.version if active else None,
    )
    config, weights = encode(config, trained.tensors)
    return Outcome(config, weights, metrics, promote, reason, active.version if active else None)


def _train_lexical(backbone: Any, params: dict[str, Any], keys: list[str], x: np.ndarray, y: np.ndarray,
                   labels: list[str], train_idx: np.ndarray, val_idx: np.ndarray, active: Adapter | None, *,
                   report: Reporter, job_id: str, conclude: "Conclusion") -> Outcome:
    """Lexical or hybrid (adapters/lexical.py): TF-IDF n-grams (hybrid: and the vectors) and a
    logistic regression fitted on the training split from scratch, evaluated as it will serve
    (the version's tensors rebuilt into an Adapter), then the end every method shares."""
    method, started = params["method"], time.perf_counter()
    if report.cancelled():
        raise Cancelled()
    trained = train_lexical(method, [keys[i] for i in train_idx], y[train_idx], labels,
                            LexicalParams(seed=int(params.get("seed") or 0)),
                            embeddings=x[train_idx] if method == "hybrid" else None, report=report.event)
    report.progress(0.9)
    if report.cancelled():
        raise Cancelled()
    tensors = trained.model.tensors()
    probe = Adapter(AdapterConfig(backbone="", fingerprint="", dim=backbone.dim, head="linear", labels=labels,
                                  method=method, lexical=trained.settings), tensors)
    logits = probe.logits(x[val_idx], [keys[i] for i in val_idx])
    metrics, temperature, card, promote, reason = conclude.finish(
        evaluate(y[val_idx], logits.argmax(1), labels), logits,
        {"method": method, "head": "linear", "seconds": time.perf_counter() - started})
    config = AdapterConfig(
        backbone=backbone.id, fingerprint=backbone.fingerprint, dim=backbone.dim, head="linear", labels=labels,
        metrics=metrics, method=method, lexical=trained.settings, temperature=temperature, card=card,
        training={"method": method, "job_id": job_id, "examples": len(keys), "train": len(train_idx),
                  "validation": len(val_idx), **trained.summary},
        parent_version=active.version if active else None,
    )
    config, weights = encode(config, tensors)
    return Outcome(config, weights, metrics, promote, reason, active.version if active else None)


def read_examples(examples: list[dict[str, str]], report: Reporter
                  ) -> tuple[list[str], list[str], np.ndarray, dict[str, Any], dict[str, str]]:
    """(keys, labels, y, data summary, where): examples hold a text or a base64 image, and that
    string also keys the embedding cache; `where` names each item's first example in errors.
    Says what came in (the `validation` event)."""
    keys = [e["text"] if "text" in e else e["image"] for e in examples]
    names = [e["label"] for e in examples]
    labels = sorted(set(names))
    y = np.array([labels.index(n) for n in names])
    data = cards.data_summary(examples, labels)
    report.event("validation", {"examples": len(keys), "classes": len(labels),
                                "per_class": {label: int((y == i).sum()) for i, label in enumerate(labels)},
                                "duplicates": data["duplicates"], "label_conflicts": data["label_conflicts"]["items"]})
    where: dict[str, str] = {}
    for i, (k, e) in enumerate(zip(keys, examples)):
        where.setdefault(k, e.get("at", f"examples[{i}]"))
    return keys, labels, y, data, where


def lora_params(params: dict[str, Any], shape: Any) -> LoraParams:
    """The LoRA recipe from a job's params, the unset ones at their defaults; InvalidParams
    when they do not fit this backbone."""
    offered = shape.layers - shape.split
    layers = params.get("lora_layers") or offered
    if layers > offered:
        raise InvalidParams(f"lora_layers {layers}: this backbone adapts at most its top {offered} layers "
                            "(GRAFT_SPLIT_LAYERS)")
    rank = int(params.get("lora_rank") or 8)
    names = params.get("lora_targets") or list(TARGET_NAMES)
    return LoraParams(rank=rank, alpha=float(params.get("lora_alpha") or 2 * rank), layers=layers,
                      targets=tuple(TARGET_NAMES[n] for n in names), **_loop_params(params))


def setfit_params(params: dict[str, Any], shape: Any) -> SetFitParams:
    """The few-shot contrastive recipe (adapters/fewshot.py) from a job's params: its LoRA
    (lora_rank, lora_alpha, lora_layers, lora_targets) as method lora reads it, and the loop's
    lr, epochs, batch_size (pairs a step), weight_decay, warmup_fraction and seed."""
    if params.get("continual"):
        raise InvalidParams("method setfit starts from the pretrained encoder: params.continual is not offered "
                            "(use method lora or head to continue from the active version)")
    lora = lora_params({k: v for k, v in params.items() if k.startswith("lora_")}, shape)
    loop = {k: params[k] for k in ("lr", "epochs", "batch_size", "weight_decay", "warmup_fraction", "seed")
            if params.get(k) is not None}
    return SetFitParams(layers=lora.layers, rank=lora.rank, alpha=lora.alpha, targets=lora.targets, **loop)


def unfreeze_params(params: dict[str, Any], shape: Any, max_bytes: int | None = None) -> UnfreezeParams:
    """The unfreeze recipe from a job's params, the unset ones at their defaults; InvalidParams
    when they do not fit this backbone, or its layers' weights would exceed `max_bytes`."""
    offered, unit = shape.layers - shape.split, shape.unit  # text: layers; image: blocks (and the head conv)
    layers = params.get("unfreeze_layers") or offered
    if layers > offered:
        raise InvalidParams(f"unfreeze_layers {layers}: this backbone unfreezes at most its top {offered} {unit}s "
                            f"({shape.setting})")
    size, mib = shape.unfreeze_bytes(layers), 1024 * 1024
    if max_bytes is not None and size > max_bytes:
        fits = max([k for k in range(1, offered + 1) if shape.unfreeze_bytes(k) <= max_bytes], default=0)
        raise InvalidParams(
            f"unfreeze_layers {layers}: the adapter would carry {size / mib:.1f} MiB of {unit} weights "
            f"({shape.bytes_note()}), over GRAFT_MAX_UNFREEZE_BYTES ({max_bytes / mib:.1f} MiB): "
            + (f"unfreeze at most {fits} {unit}s" if fits else "use method " + ("lora" if unit == "layer" else "head"))
            + ", or raise the setting")
    image = unit == "block"  # its own defaults (adapters/deep.py), its probe trained as image heads are
    return UnfreezeParams(layers=layers, probe_standardize=image,
                          **{**(IMAGE_UNFREEZE_DEFAULTS if image else {}), **_loop_params(params)})


def _loop_params(params: dict[str, Any]) -> dict[str, Any]:
    """The shared training loop's knobs a job's params set (adapters/deep.py DeepParams)."""
    return {k: params[k] for k in ("epochs", "batch_size", "lr", "patience", "weight_decay", "warmup_fraction",
                                   "seed", "layer_decay", "gradual_unfreeze") if params.get(k) is not None}


def _train_deep(backbone: Any, params: dict[str, Any], keys: list[str], y: np.ndarray, labels: list[str],
                train_idx: np.ndarray, val_idx: np.ndarray, baselines: dict[str, Any], active: Adapter | None,
                head_init: dict[str, np.ndarray] | None, *, cache: HiddenStateCache,
                report: Reporter, promote_margin: float, job_id: str, max_unfreeze_bytes: int | None,
                conclude: "Conclusion", where: dict[str, str] | None = None) -> Outcome:
    """LoRA on the top layers, or the top layers unfrozen: hidden states from the serving
    lower graph, the layers' weights (LoRA factors, or all of them) and a head trained in
    torch (adapters/deep.py), evaluated through the serving upper graph (upper_weights for
    unfreeze). Continual (`head_init` given): from the active version's head, and from its
    factors or layers too when it is a version of the same method and recipe. Image backbones
    take method unfreeze only: their "hidden states" are the lower graph's feature maps, and
    `augment` adds that many augmented copies of each training image's (computed, not cached).
    Method setfit (adapters/fewshot.py): LoRA factors trained contrastively on pairs of the
    training examples, then a logistic-regression head; its version is a LoRA version."""
    method = params["method"]
    shape = backbone.split_shape
    if shape is None or (backbone.kind == "image" and method != "unfreeze"):
        raise InvalidParams(f"method {method} needs a text backbone split for deep adapters; {backbone.id!r} is "
                            + ("an image backbone: use method head or unfreeze" if shape is not None else
                               "not (GRAFT_SPLIT_LAYERS > 0 for text, GRAFT_IMAGE_SPLIT_BLOCKS > 0 for images)"))
    p: DeepParams | SetFitParams
    if method == "unfreeze":
        p = unfreeze_params(params, shape, max_unfreeze_bytes)
    else:
        p = lora_params(params, shape) if method == "lora" else setfit_params(params, shape)
    if method == "setfit" and np.bincount(y[train_idx]).min() < 2:
        raise InvalidParams("method setfit pairs examples of the same label: it needs at least 3 examples of each "
                            "label (2 to train on, 1 to validate)")
    hidden, counts = hidden_cached(backbone, keys, cache, report, where=where)
    report.progress(0.2)
    report.event("hidden_states", {"examples": len(keys), **counts, "split": shape.split, "layers": p.layers})
    started = time.perf_counter()

    def on_epoch(r: EpochReport) -> bool:
        conclude.epoch(r)
        report.progress(0.2 + 0.75 * r.epoch / p.epochs)
        report.event("epoch", {"epoch": r.epoch, "train_loss": round(r.train_loss, 5),
                               "val_loss": round(r.val_loss, 5), "val_macro_f1": round(r.val_macro_f1, 4)})
        return report.cancelled()

    lora = method in ("lora", "setfit")  # a setfit version is a LoRA version: it serves as one
    if not isinstance(p, UnfreezeParams):
        recipe: dict[str, Any] = {"rank": p.rank, "alpha": p.alpha, "layers": p.layers, "split": shape.split,
                                  "targets": [n for n, t in TARGET_NAMES.items() if t in p.targets]}
        same = ("rank", "layers", "split")
    else:
        recipe = shape.unfreeze_recipe(p.layers)
        same = ("layers", "split")
    active_recipe = (active.config.lora or active.config.unfreeze) if active is not None else None
    weights_init = None
    if head_init is not None and active is not None and active.config.method == method and active_recipe and all(
            active_recipe.get(k) == recipe[k] for k in same):
        weights_init = active.deep
    hidden_train, hidden_val = [hidden[i] for i in train_idx], [hidden[i] for i in val_idx]
    y_train = y[train_idx]
    augment = int(params.get("augment") or 0)
    if augment and backbone.kind == "image":
        extra, y_extra = augmented(backbone, [keys[i] for i in train_idx], y_train, TrainParams(
            augment=augment, seed=p.seed), report, embed=lambda px: list(backbone.hidden_states(px)))
        hidden_train, y_train = hidden_train + list(extra), np.concatenate([y_train, y_extra])
        report.event("augmentation", {"copies": augment, "train": len(y_train)})
    if isinstance(p, SetFitParams):
        trained = train_setfit(backbone.upper_module(), shape, hidden_train, y_train, hidden_val, y[val_idx],
                               labels, p, on_epoch=on_epoch, stop=report.cancelled)
    elif isinstance(p, LoraParams):
        trained = train_lora(backbone.upper_module(), shape, hidden_train, y_train, hidden_val, y[val_idx],
                             labels, p, on_epoch=on_epoch, head_init=head_init, factors_init=weights_init)
    else:
        trained = train_unfreeze(backbone.upper_module(), shape, hidden_train, y_train, hidden_val, y[val_idx],
                                 labels, p, on_epoch=on_epoch, head_init=head_init, weights_init=weights_init)
    # Evaluated as it will serve: the ORT upper graph with these weights, then the head.
    served = backbone.embed_deep(_items(backbone, [keys[i] for i in val_idx], where),
                                 [trained.weights] * len(val_idx)).vectors
    tensors = {**trained.head, **deep_tensors(trained.weights)}
    probe = Adapter(AdapterConfig(backbone="", fingerprint="", dim=backbone.dim, head="linear", labels=labels),
                    trained.head)
    logits = probe.logits(served)
    metrics, temperature, card, promote, reason = conclude.finish(
        evaluate(y[val_idx], logits.argmax(1), labels), logits,
        {"method": method, "head": "linear", "seconds": time.perf_counter() - started})
    config = AdapterConfig(
        backbone=backbone.id, fingerprint=backbone.fingerprint, dim=backbone.dim, head="linear", labels=labels,
        metrics=metrics, method="lora" if lora else method, lora=recipe if lora else None,
        unfreeze=None if lora else recipe,
        temperature=temperature, card=card,
        training={"method": method, "job_id": job_id,
                  "params": {**asdict(p), **({"targets": recipe["targets"]} if lora else {})},
                  "examples": len(keys), "train": len(train_idx), "validation": len(val_idx),
                  "epochs_run": trained.epochs_run, "best_epoch": trained.best_epoch,
                  "continual_from": active.version if head_init is not None and active else None,
                  ("factors_from_active" if lora else "weights_from_active"): weights_init is not None},
        parent_version=active.version if active else None,
    )
    config, weights = encode(config, tensors)
    return Outcome(config, weights, metrics, promote, reason, active.version if active else None)


class InvalidParams(ValueError):
    """The job's params do not fit its backbone (the API checks first; the worker again)."""


class Conclusion:
    """The end every method shares once its head is trained: calibration on the validation
    logits, the evaluation event, the promotion decision (label drops included) and what the
    model card records (adapters/card.py). `epoch` collects the curves on the way."""

    def __init__(self, *, data: dict[str, Any], changes: dict[str, Any] | None, baselines: dict[str, Any],
                 params: dict[str, Any], labels: list[str], y_val: np.ndarray, groups: list[str | None],
                 licence: str, report: Reporter, promote_margin: float) -> None:
        self.data, self.changes, self.baselines, self.params = data, changes, baselines, params
        self.labels, self.y_val, self.groups, self.licence = labels, y_val, groups, licence
        self.report, self.promote_margin = report, promote_margin
        self.curves: list[dict[str, Any]] = []

    def epoch(self, r: EpochReport) -> None:
        self.curves.append({"epoch": r.epoch, "train_loss": round(r.train_loss, 5), "val_loss": round(r.val_loss, 5),
                            "val_macro_f1": round(r.val_macro_f1, 4)})

    def finish(self, evaluation: dict[str, Any], val_logits: np.ndarray,
               candidate: dict[str, Any]) -> tuple[dict[str, Any], float, dict[str, Any], bool, str]:
        """(metrics, temperature, card record, promote, reason) for the trained version."""
        temperature, calibrated = calibration.calibrate(val_logits, self.y_val)
        metrics = {**evaluation, "baselines": {k: _summary(v) for k, v in self.baselines.items()},
                   "calibration": calibrated}
        if self.changes is not None:
            metrics["label_changes"] = self.changes
        self.report.event("calibration", {k: calibrated[k] for k in ("temperature", "ece_before", "ece_after")})
        self.report.event("evaluation", {"macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
                                         "baselines": metrics["baselines"],
                                         **({"label_changes": self.changes} if self.changes else {})})
        promote, reason = decide(metrics, self.baselines.get("active"), self.promote_margin,
                                 dropped=(self.changes or {}).get("dropped", []),
                                 allow_dropped_labels=bool(self.params.get("allow_dropped_labels")))
        chosen = {**candidate, "score": round(metrics["macro_f1"], 6), "metric": "validation macro-F1",
                  "seconds": round(candidate["seconds"], 3), "chosen": True}
        card = cards.record(
            data=self.data, curves=self.curves,
            groups=cards.group_metrics(self.y_val, val_logits.argmax(1), self.groups, self.labels),
            candidates=[chosen], decision={"decision": "promote" if promote else "candidate", "reason": reason},
            licence=self.licence)
        return metrics, temperature, card, promote, reason


def decide(metrics: dict[str, Any], active: dict[str, Any] | None, margin: float, *,
           dropped: list[str] | tuple[str, ...] = (), allow_dropped_labels: bool = False) -> tuple[bool, str]:
    """Negative-transfer guard: beat what serves by the margin, or stay a candidate. A version
    that drops labels the active one serves stays a candidate unless `allow_dropped_labels`:
    requests of those classes would silently get another label."""
    new = metrics["macro_f1"]
    if active is None:
        return True, "no active version: the first trained version serves"
    if dropped and not allow_dropped_labels:
        return False, (f"it drops the labels {list(dropped)} that the active version {active.get('version')} "
                       "serves (their requests would get another label): kept as a candidate; fine-tune with "
                       "params.allow_dropped_labels: true, or promote it with allow_dropped_labels: true")
    if new >= active["macro_f1"] + margin:
        return True, f"macro-F1 {new:.4f} beats the active version's {active['macro_f1']:.4f} by >= {margin}"
    return False, (f"macro-F1 {new:.4f} does not beat the active version's {active['macro_f1']:.4f} "
                   f"by the margin {margin}: kept as a candidate (promote it explicitly if wanted)")


def embed_cached(backbone: Backbone, keys: list[str], cache: EmbeddingCache, report: Reporter,
                 where: dict[str, str] | None = None) -> np.ndarray:
    """Embeddings from the cache (text or base64 image + backbone fingerprint), the rest
    computed; `where` names each image's example for errors (`examples[3]`, `dog/a.png`)."""
    unique = list(dict.fromkeys(keys))
    cached = cache.cached_embeddings(backbone.fingerprint, unique)
    missing = [k for k in unique if k not in cached]
    fresh: dict[str, bytes] = {}
    for i in range(0, len(missing), 64):
        chunk = missing[i : i + 64]
        items = _prepared(backbone, chunk, where or {}) if backbone.kind == "image" else chunk
        for key, vec in zip(chunk, backbone.embed(items).vectors):
            fresh[key] = vec.astype(np.float32).tobytes()
        report.progress(0.2 * (i + len(chunk)) / max(1, len(missing)))
        if report.cancelled():
            raise Cancelled()
    if fresh:
        cache.store_embeddings(backbone.fingerprint, fresh)
    vectors = {**cached, **fresh}
    return np.stack([np.frombuffer(vectors[k], dtype=np.float32) for k in keys])


def hidden_cached(backbone: Any, keys: list[str], cache: HiddenStateCache, report: Reporter,
                  chunk: int = 256, where: dict[str, str] | None = None) -> tuple[list[np.ndarray], dict[str, int]]:
    """The lower graph's hidden states of `keys` (TextBackbone.hidden_states: float16,
    (tokens, hidden) each; ImageBackbone.hidden_states of base64 images: (positions, channels)),
    from the cache under `backbone.hidden_key` where there, the rest computed and stored; and
    how many distinct texts or images were `cached` and `computed`."""
    key = backbone.hidden_key
    unique = list(dict.fromkeys(keys))
    cached = {t: np.frombuffer(b, dtype=np.float16).reshape(n, -1)
              for t, (n, b) in cache.cached_hidden_states(key, unique).items()}
    missing = [k for k in unique if k not in cached]
    fresh: dict[str, np.ndarray] = {}
    for i in range(0, len(missing), chunk):
        part = missing[i : i + chunk]
        fresh.update(zip(part, backbone.hidden_states(_items(backbone, part, where))))
        report.progress(0.2 * (i + len(part)) / max(1, len(missing)))
        if report.cancelled():
            raise Cancelled()
    if fresh:
        cache.store_hidden_states(key, {t: (len(h), np.ascontiguousarray(h, dtype=np.float16).tobytes())
                                        for t, h in fresh.items()})
    states = {**cached, **fresh}
    return [states[k] for k in keys], {"cached": len(cached), "computed": len(fresh)}


def _items(backbone: Any, keys: list[str], where: dict[str, str] | None) -> list[Any]:
    """What the backbone's deep methods take for these keys: texts as they are, images decoded."""
    return _prepared(backbone, keys, where or {}) if backbone.kind == "image" else keys


class InvalidExample(ValueError):
    """An example the API accepted (its image header was fine) cannot be used: the job fails
    naming it."""


def _prepared(backbone: Backbone, chunk: list[str], where: dict[str, str]) -> list[Any]:
    """Images decoded here, in the worker (the API read only their headers)."""
    ready = []
    for key in chunk:
        try:
            ready.append(backbone.prepare(base64.b64decode(key)))
        except ItemError as e:
            raise InvalidExample(f"{where.get(key, 'an image')}: {e}") from None
    return ready


def augmented(backbone: Backbone, images: list[str], y: np.ndarray, p: TrainParams,
              report: Reporter, embed: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """`p.augment` random variants of each training image, embedded (never cached: they
    differ per seed), or what `embed(pixels)` makes of them (method unfreeze: the lower
    graph's feature maps). Validation images are never augmented."""
    from models.image import augment

    rng = np.random.default_rng(p.seed)
    vectors = []
    for i in range(0, len(images), 16):
        chunk = [backbone.prepare(base64.b64decode(k)) for k in images[i : i + 16]]
        variants = [augment(px, rng) for px in chunk for _ in range(p.augment)]
        vectors.append(np.asarray(embed(variants)) if embed else backbone.embed(variants).vectors)
        if report.cancelled():
            raise Cancelled()
    return np.concatenate(vectors), np.repeat(y, p.augment)


def _predict(tensors: dict[str, np.ndarray], head: str, x: np.ndarray) -> np.ndarray:
    config = AdapterConfig(backbone="", fingerprint="", dim=x.shape[1], head=head,
                           labels=[str(i) for i in range(len(tensors["bias" if head == "linear" else "b2"]))])
    return Adapter(config, tensors).predict_proba(x).argmax(1)


def reference_head(backbone: Backbone, labels: list[str], x_train: np.ndarray, y_train: np.ndarray
                   ) -> tuple[str, dict[str, np.ndarray]]:
    """The head a model gets without training, and its baseline name: the label names embedded
    ("zero_shot": text backbones, or a CLIP-style text tower's label prompts), else each class's
    mean training vector ("prototype": images, whose backbone cannot embed names)."""
    if backbone.kind == "text":
        reference, label_rows = "zero_shot", backbone.embed(labels).vectors
    elif getattr(backbone, "text_tower", None) is not None:
        reference, label_rows = "zero_shot", backbone.text_tower.embed(backbone.text_tower.texts(labels))
    else:
        reference, label_rows = "prototype", class_means(x_train, y_train, len(labels))
    return reference, zero_shot.build(backbone.id, backbone.fingerprint, labels, label_rows)[1]


def class_means(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    means = np.stack([x[y == c].mean(0) for c in range(k)])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "version") if k in metrics}
