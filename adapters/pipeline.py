"""The fine-tune pipeline: labeled examples in, an evaluated adapter version and a promotion
decision out. No server, no database: the caller hands in the backbone, the active version
(if any), an embedding cache and a reporter, and publishes the result itself.

Steps: validate -> embed (cached) -> stratified split -> (image augmentation) -> baselines
(majority, zero-shot or class prototypes, the active version) -> (continual init) -> train
the head with early stopping -> evaluate -> negative-transfer guard decides promotion.
"""
from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

import numpy as np

from adapters import zero_shot
from adapters.evaluation import evaluate, stratified_split
from adapters.format import Adapter, AdapterConfig, deep_tensors, encode
from adapters.deep import DeepParams, LoraParams, UnfreezeParams, train_lora, train_unfreeze
from adapters.training import Cancelled, EpochReport, TrainParams, continual_init, train_head
from models import Backbone
from models.split import TARGET_NAMES
from models.base import ItemError


TRAIN_FIELDS = {f.name for f in fields(TrainParams)}
DEEP_METHODS = ("lora", "unfreeze")  # trained on hidden states of a split text backbone (adapters/deep.py)


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
    API checks it at submit, the worker again, in case its settings differ)."""
    # Training knobs only: the job's other params (keep_examples) are the queue's business.
    settings = {k: v for k, v in params.items() if v is not None and k in TRAIN_FIELDS}
    p = TrainParams(**{"standardize": backbone.kind == "image", **settings})
    # Examples hold a text or a base64 image; that string also keys the embedding cache.
    keys = [e["text"] if "text" in e else e["image"] for e in examples]
    names = [e["label"] for e in examples]
    labels = sorted(set(names))
    y = np.array([labels.index(n) for n in names])
    report.event("validation", {"examples": len(keys), "classes": len(labels),
                                "per_class": {label: int((y == i).sum()) for i, label in enumerate(labels)}})
    where: dict[str, str] = {}  # each item's first example, to name it in errors
    for i, (k, e) in enumerate(zip(keys, examples)):
        where.setdefault(k, e.get("at", f"examples[{i}]"))
    train_idx, val_idx = stratified_split(y, p.val_fraction, p.seed)
    report.event("split", {"train": len(train_idx), "validation": len(val_idx), "seed": p.seed})
    deep = params.get("method") in DEEP_METHODS
    # Deep methods train on hidden states: only the validation rows need vectors (for the baselines).
    needed = val_idx if deep else np.arange(len(keys))
    x = np.zeros((len(keys), backbone.dim), dtype=np.float32)
    x[needed] = embed_cached(backbone, [keys[i] for i in needed], cache, report, where)
    x_train, y_train = x[train_idx], y[train_idx]
    if p.augment and backbone.kind == "image":
        x_aug, y_aug = augmented(backbone, [keys[i] for i in train_idx], y_train, p, report)
        x_train, y_train = np.concatenate([x_train, x_aug]), np.concatenate([y_train, y_aug])
        report.event("augmentation", {"copies": p.augment, "train": len(y_train)})

    # The head a model gets without training: label names embedded (text), or each class's
    # mean training embedding (images, whose backbone cannot embed names).
    if backbone.kind == "text":
        reference, label_rows = "zero_shot", backbone.embed(labels).vectors
    else:
        reference, label_rows = "prototype", class_means(x[train_idx], y[train_idx], len(labels))
    _, zs_tensors = zero_shot.build(backbone.id, backbone.fingerprint, labels, label_rows)
    x_val, y_val = x[val_idx], y[val_idx]
    baselines = {
        "majority": evaluate(y_val, np.full(len(y_val), np.bincount(y[train_idx]).argmax()), labels),
        reference: evaluate(y_val, _predict(zs_tensors, "linear", x_val), labels),
    }
    if active is not None:
        index = {label: i for i, label in enumerate(labels)}
        active_x = x_val if active.deep is None else backbone.embed_deep(  # type: ignore[attr-defined]
            [keys[i] for i in val_idx], [active.deep] * len(val_idx)).vectors
        active_pred = active.predict_proba(active_x).argmax(1)
        baselines["active"] = evaluate(y_val, np.array([index.get(active.labels[q], -1) for q in active_pred]), labels)
        baselines["active"]["version"] = active.version
    init = None
    if p.continual and active is not None:
        init = continual_init("linear" if deep else p.head, labels, active.labels, active.config.head,
                              active.tensors, zs_tensors["weight"])
    if deep:
        return _train_deep(backbone, params, keys, y, labels, train_idx, val_idx, baselines, active,
                           init if p.continual else None, cache=cache,
                           report=report, promote_margin=promote_margin, job_id=job_id,
                           max_unfreeze_bytes=max_unfreeze_bytes)

    def on_epoch(r: EpochReport) -> bool:
        report.progress(0.2 + 0.75 * r.epoch / p.epochs)
        report.event("epoch", {"epoch": r.epoch, "train_loss": round(r.train_loss, 5),
                               "val_loss": round(r.val_loss, 5), "val_macro_f1": round(r.val_macro_f1, 4)})
        return report.cancelled()

    trained = train_head(x_train, y_train, x_val, y_val, labels, p, init=init, on_epoch=on_epoch)
    if trained.stopped_early:
        report.event("early_stop", {"epoch": trained.epochs_run, "best_epoch": trained.best_epoch,
                                    "patience": p.patience})
    metrics = {**trained.val_metrics, "baselines": {k: _summary(v) for k, v in baselines.items()}}
    report.event("evaluation", {"macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
                                "baselines": metrics["baselines"]})
    promote, reason = decide(metrics, baselines.get("active"), promote_margin)
    config = AdapterConfig(
        backbone=backbone.id, fingerprint=backbone.fingerprint, dim=backbone.dim, head=p.head,
        labels=labels, metrics=metrics,
        training={"method": "fine-tune", "job_id": job_id, "params": p.as_dict(),
                  "examples": len(keys), "train": len(train_idx), "validation": len(val_idx),
                  "epochs_run": trained.epochs_run, "best_epoch": trained.best_epoch,
                  "continual_from": active.version if init is not None and active else None},
        parent_version=active.version if active else None,
    )
    config, weights = encode(config, trained.tensors)
    return Outcome(config, weights, metrics, promote, reason, active.version if active else None)


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


def unfreeze_params(params: dict[str, Any], shape: Any, max_bytes: int | None = None) -> UnfreezeParams:
    """The unfreeze recipe from a job's params, the unset ones at their defaults; InvalidParams
    when they do not fit this backbone, or its layers' weights would exceed `max_bytes`."""
    offered = shape.layers - shape.split
    layers = params.get("unfreeze_layers") or offered
    if layers > offered:
        raise InvalidParams(f"unfreeze_layers {layers}: this backbone unfreezes at most its top {offered} layers "
                            "(GRAFT_SPLIT_LAYERS)")
    size, mib = layers * shape.layer_bytes, 1024 * 1024
    if max_bytes is not None and size > max_bytes:
        fits = max_bytes // shape.layer_bytes
        raise InvalidParams(
            f"unfreeze_layers {layers}: the adapter would carry {size / mib:.1f} MiB of layer weights "
            f"({shape.layer_bytes / mib:.1f} MiB a layer), over GRAFT_MAX_UNFREEZE_BYTES ({max_bytes / mib:.1f} MiB): "
            + (f"unfreeze at most {fits} layers" if fits else "use method lora") + ", or raise the setting")
    return UnfreezeParams(layers=layers, **_loop_params(params))


def _loop_params(params: dict[str, Any]) -> dict[str, Any]:
    """The shared training loop's knobs a job's params set (adapters/deep.py DeepParams)."""
    return {k: params[k] for k in ("epochs", "batch_size", "lr", "patience", "weight_decay", "warmup_fraction",
                                   "seed", "layer_decay", "gradual_unfreeze") if params.get(k) is not None}


def _train_deep(backbone: Any, params: dict[str, Any], keys: list[str], y: np.ndarray, labels: list[str],
                train_idx: np.ndarray, val_idx: np.ndarray, baselines: dict[str, Any], active: Adapter | None,
                head_init: dict[str, np.ndarray] | None, *, cache: HiddenStateCache,
                report: Reporter, promote_margin: float, job_id: str, max_unfreeze_bytes: int | None) -> Outcome:
    """LoRA on the top layers, or the top layers unfrozen: hidden states from the serving
    lower graph, the layers' weights (LoRA factors, or all of them) and a head trained in
    torch (adapters/deep.py), evaluated through the serving upper graph (upper_weights for
    unfreeze). Continual (`head_init` given): from the active version's head, and from its
    factors or layers too when it is a version of the same method and recipe."""
    method = params["method"]
    shape = backbone.split_shape
    if backbone.kind != "text" or shape is None:
        raise InvalidParams(f"method {method} needs a text backbone split for deep adapters; {backbone.id!r} is "
                            "not (GRAFT_SPLIT_LAYERS > 0, text backbones)")
    p: DeepParams = lora_params(params, shape) if method == "lora" else unfreeze_params(params, shape, max_unfreeze_bytes)
    hidden, counts = hidden_cached(backbone, keys, cache, report)
    report.progress(0.2)
    report.event("hidden_states", {"examples": len(keys), **counts, "split": shape.split, "layers": p.layers})

    def on_epoch(r: EpochReport) -> bool:
        report.progress(0.2 + 0.75 * r.epoch / p.epochs)
        report.event("epoch", {"epoch": r.epoch, "train_loss": round(r.train_loss, 5),
                               "val_loss": round(r.val_loss, 5), "val_macro_f1": round(r.val_macro_f1, 4)})
        return report.cancelled()

    if isinstance(p, LoraParams):
        recipe: dict[str, Any] = {"rank": p.rank, "alpha": p.alpha, "layers": p.layers, "split": shape.split,
                                  "targets": [n for n, t in TARGET_NAMES.items() if t in p.targets]}
        same = ("rank", "layers", "split")
    else:
        recipe = {"layers": p.layers, "split": shape.split, "backbone_layers": shape.layers, "hidden": shape.hidden,
                  "intermediate": shape.intermediate}
        same = ("layers", "split")
    active_recipe = (active.config.lora or active.config.unfreeze) if active is not None else None
    weights_init = None
    if head_init is not None and active is not None and active.config.method == method and active_recipe and all(
            active_recipe.get(k) == recipe[k] for k in same):
        weights_init = active.deep
    hidden_train, hidden_val = [hidden[i] for i in train_idx], [hidden[i] for i in val_idx]
    if isinstance(p, LoraParams):
        trained = train_lora(backbone.upper_module(), shape, hidden_train, y[train_idx], hidden_val, y[val_idx],
                             labels, p, on_epoch=on_epoch, head_init=head_init, factors_init=weights_init)
    else:
        trained = train_unfreeze(backbone.upper_module(), shape, hidden_train, y[train_idx], hidden_val, y[val_idx],
                                 labels, p, on_epoch=on_epoch, head_init=head_init, weights_init=weights_init)
    # Evaluated as it will serve: the ORT upper graph with these weights, then the head.
    served = backbone.embed_deep([keys[i] for i in val_idx], [trained.weights] * len(val_idx)).vectors
    tensors = {**trained.head, **deep_tensors(trained.weights)}
    probe = Adapter(AdapterConfig(backbone="", fingerprint="", dim=backbone.dim, head="linear", labels=labels),
                    trained.head)
    metrics = {**evaluate(y[val_idx], probe.predict_proba(served).argmax(1), labels),
               "baselines": {k: _summary(v) for k, v in baselines.items()}}
    report.event("evaluation", {"macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
                                "baselines": metrics["baselines"]})
    promote, reason = decide(metrics, baselines.get("active"), promote_margin)
    lora = method == "lora"
    config = AdapterConfig(
        backbone=backbone.id, fingerprint=backbone.fingerprint, dim=backbone.dim, head="linear", labels=labels,
        metrics=metrics, method=method, lora=recipe if lora else None, unfreeze=None if lora else recipe,
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


def decide(metrics: dict[str, Any], active: dict[str, Any] | None, margin: float) -> tuple[bool, str]:
    """Negative-transfer guard: beat what serves by the margin, or stay a candidate."""
    new = metrics["macro_f1"]
    if active is None:
        return True, "no active version: the first trained version serves"
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
                  chunk: int = 256) -> tuple[list[np.ndarray], dict[str, int]]:
    """The lower graph's hidden states of `keys` (TextBackbone.hidden_states: float16,
    (tokens, hidden) each), from the cache under `backbone.hidden_key` where there, the rest
    computed and stored; and how many distinct texts were `cached` and `computed`."""
    key = backbone.hidden_key
    unique = list(dict.fromkeys(keys))
    cached = {t: np.frombuffer(b, dtype=np.float16).reshape(n, -1)
              for t, (n, b) in cache.cached_hidden_states(key, unique).items()}
    missing = [k for k in unique if k not in cached]
    fresh: dict[str, np.ndarray] = {}
    for i in range(0, len(missing), chunk):
        part = missing[i : i + chunk]
        fresh.update(zip(part, backbone.hidden_states(part)))
        report.progress(0.2 * (i + len(part)) / max(1, len(missing)))
        if report.cancelled():
            raise Cancelled()
    if fresh:
        cache.store_hidden_states(key, {t: (len(h), np.ascontiguousarray(h, dtype=np.float16).tobytes())
                                        for t, h in fresh.items()})
    states = {**cached, **fresh}
    return [states[k] for k in keys], {"cached": len(cached), "computed": len(fresh)}


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
            raise InvalidExample(f"{where[key]}: {e}") from None
    return ready


def augmented(backbone: Backbone, images: list[str], y: np.ndarray, p: TrainParams,
              report: Reporter) -> tuple[np.ndarray, np.ndarray]:
    """`p.augment` random variants of each training image, embedded (never cached: they
    differ per seed). Validation images are never augmented."""
    from models.image import augment

    rng = np.random.default_rng(p.seed)
    vectors = []
    for i in range(0, len(images), 16):
        chunk = [backbone.prepare(base64.b64decode(k)) for k in images[i : i + 16]]
        variants = [augment(px, rng) for px in chunk for _ in range(p.augment)]
        vectors.append(backbone.embed(variants).vectors)
        if report.cancelled():
            raise Cancelled()
    return np.concatenate(vectors), np.repeat(y, p.augment)


def _predict(tensors: dict[str, np.ndarray], head: str, x: np.ndarray) -> np.ndarray:
    config = AdapterConfig(backbone="", fingerprint="", dim=x.shape[1], head=head,
                           labels=[str(i) for i in range(len(tensors["bias" if head == "linear" else "b2"]))])
    return Adapter(config, tensors).predict_proba(x).argmax(1)


def class_means(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    means = np.stack([x[y == c].mean(0) for c in range(k)])
    return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "version") if k in metrics}
