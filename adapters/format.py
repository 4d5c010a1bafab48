"""One immutable adapter version: a JSON config plus head weights in safetensors.

The config names the backbone (id and fingerprint) and embedding dim the head was built
for, the head kind, the labels, metrics, a training summary, created_at and the parent
version; it also carries the SHA-256 of the weights bytes. Loading checks all of them, so a
head never runs on embeddings it was not made for, and a corrupted file is refused (the
checksum travels with the bytes it guards: it catches corruption, not deliberate tampering).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from adapters import lexical as lex
from models.split import TARGETS, LoraFactors, SplitShape, UnfrozenLayers

METHODS = ("head", "lora", "unfreeze", *lex.LEXICAL_METHODS)
MAX_LORA_RANK = 64

HEAD_KINDS = {
    "linear": ("weight", "bias"),  # logits = x W^T + b
    "mlp": ("w1", "b1", "w2", "b2"),  # logits = relu(x W1^T + b1) W2^T + b2
}


class AdapterFormatError(ValueError):
    """A version that does not fit its backbone, or whose bytes are not what was stored."""


@dataclass(frozen=True)
class AdapterConfig:
    backbone: str
    fingerprint: str
    dim: int
    head: str
    labels: list[str]
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())
    parent_version: int | None = None
    weights_sha256: str = ""
    # "head": a head on the backbone's vectors; "lora": LoRA factors of the top layers too
    # (tensors lora_a.<layer>.<target> and lora_b.<layer>.<target>, scale folded into B),
    # with `lora` = {"rank", "alpha", "layers", "split", "targets"}; "unfreeze": every weight
    # of the top layers too (tensors layer.<layer>.<param path>), with `unfreeze` = {"layers",
    # "split", "backbone_layers", "hidden", "intermediate"} (the split shape they fit); on an image
    # backbone {"layers", "split", "backbone_layers", "hidden", "arch"}, its units blocks, the head
    # conv unit <backbone_layers> (models/image_split.py).
    method: str = "head"
    lora: dict[str, Any] | None = None
    unfreeze: dict[str, Any] | None = None
    # "lexical": TF-IDF word and char n-grams and a linear head over them, trained from
    # scratch (adapters/lexical.py; tensors lexical.<word|char>.<terms|offsets|idf> beside
    # weight and bias); "hybrid": the same and the backbone's vector, one linear head over
    # both; a hybrid with `lora` settings and factors reads the vector its own LoRA factors
    # give (auto's candidate lora-hybrid). `lexical` = {"word_ngram", "char_ngram",
    # "word_terms", "char_terms", "embedding_weight" (hybrid; None for lexical)}: what
    # rebuilds the vectoriser exactly.
    lexical: dict[str, Any] | None = None
    # Temperature scaling (adapters/calibration.py): served scores are softmax(logits / T), T
    # fitted on the validation split so a score means a probability; 1.0 for versions
    # made before it, which load and serve unchanged.
    temperature: float = 1.0
    # What the version's model card needs beyond metrics and training, recorded when it was
    # trained (adapters/card.py): data summary, curves, groups, candidates, decision.
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < float("inf"):
            raise AdapterFormatError(f"temperature {t!r}: a positive finite number (1.0: uncalibrated)")

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> "AdapterConfig":
        try:
            data = json.loads(raw)
            return cls(**data)
        except (TypeError, ValueError) as e:
            raise AdapterFormatError(f"adapter config is not valid: {e}") from e


@dataclass(frozen=True)
class Adapter:
    """A loaded, verified head: what the cache keeps resident and the engine applies."""

    config: AdapterConfig
    tensors: dict[str, np.ndarray]
    version: int = 0

    @property
    def labels(self) -> list[str]:
        return self.config.labels

    @property
    def nbytes(self) -> int:
        extra = lex.resident_extra(self.tensors) if self.needs_text else 0  # the vectoriser's dicts
        return sum(t.nbytes for t in self.tensors.values()) + 64 * len(self.labels) + extra

    @property
    def needs_text(self) -> bool:
        """Its rows' raw texts go into predict_proba (lexical, hybrid)."""
        return self.config.method in lex.LEXICAL_METHODS

    @property
    def needs_vector(self) -> bool:
        """Its rows need the backbone's vector (every method but lexical: those rows skip the
        backbone's graph, service/inference.backbone_pass)."""
        return self.config.method != "lexical"

    @cached_property
    def lexical(self) -> "lex.LexicalModel | None":
        """The rebuilt vectoriser and linear model (lexical, hybrid), else None."""
        if not self.needs_text:
            return None
        try:
            return lex.LexicalModel.from_tensors(self.config.lexical, without_factors(self.tensors), len(self.labels),
                                                 self.config.dim)
        except lex.LexicalFormatError as e:
            raise AdapterFormatError(str(e)) from None

    @cached_property
    def lora(self) -> LoraFactors | None:
        """The factors the upper graph takes for this adapter's rows (None: head only)."""
        if self.config.method not in ("lora", "hybrid") or not self.config.lora:
            return None
        return LoraFactors({name[len("lora_a.") :]: (t, self.tensors["lora_b." + name[len("lora_a.") :]])
                            for name, t in self.tensors.items() if name.startswith("lora_a.")})

    @cached_property
    def unfrozen(self) -> UnfrozenLayers | None:
        """The layer weights the upper_weights graph takes for this adapter's rows (None: not
        an unfreeze adapter)."""
        if self.config.method != "unfreeze":
            return None
        return UnfrozenLayers({name[len(LAYER_PREFIX) :]: t for name, t in self.tensors.items()
                               if name.startswith(LAYER_PREFIX)})

    @property
    def deep(self) -> LoraFactors | UnfrozenLayers | None:
        """What the backbone pass takes for this adapter's rows (TextBackbone.embed_deep), or
        None: its rows take the whole graph."""
        return self.lora if self.lora is not None else self.unfrozen

    def logits(self, embeddings: np.ndarray, texts: list[str] | None = None) -> np.ndarray:
        """The head's raw scores, before temperature and softmax. `texts`: the rows' raw
        texts, which lexical and hybrid adapters read (needs_text)."""
        if self.lexical is not None:
            if texts is None or len(texts) != len(embeddings):
                raise ValueError(f"a {self.config.method} adapter reads each row's text: pass texts")
            return self.lexical.logits(texts, embeddings if self.lexical.hybrid else None)
        t = self.tensors
        if self.config.head == "linear":
            return embeddings @ t["weight"].T + t["bias"]
        hidden = np.maximum(embeddings @ t["w1"].T + t["b1"], 0.0)
        return hidden @ t["w2"].T + t["b2"]

    def predict_proba(self, embeddings: np.ndarray, texts: list[str] | None = None) -> np.ndarray:
        """softmax(logits / T): calibrated probabilities (T = config.temperature), every method."""
        logits = self.logits(embeddings, texts) / self.config.temperature
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


LAYER_PREFIX = "layer."  # an unfreeze adapter's tensors: layer.<absolute layer>.<param path>


def without_factors(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors but LoRA factors: a lora-hybrid's head (check_lora checks the factors)."""
    return {k: v for k, v in tensors.items() if not k.startswith(("lora_a.", "lora_b."))}


def check_method(config: AdapterConfig, tensors: dict[str, np.ndarray]) -> None:
    """What the config's method says the adapter carries beside its head, and nothing else."""
    if config.method not in METHODS:
        raise AdapterFormatError(f"unknown adapter method {config.method!r}: use one of {list(METHODS)}")
    if config.method != "unfreeze" and any(n.startswith(LAYER_PREFIX) for n in tensors):
        raise AdapterFormatError(f"a {config.method} adapter carries no layer weights")
    if config.method in lex.LEXICAL_METHODS:  # its vocabulary: head_width
        if config.head != "linear" or config.unfreeze or (config.lora and config.method == "lexical"):
            raise AdapterFormatError(f"a {config.method} adapter has a linear head and no unfreeze settings"
                                     + ("" if config.method == "hybrid" else " or lora settings"))
        if config.lora:  # a hybrid on its own LoRA-adapted vector
            check_lora(config, tensors)
        elif len(without_factors(tensors)) < len(tensors):
            raise AdapterFormatError(f"a {config.method} adapter without lora settings carries no LoRA factors")
    elif config.method == "unfreeze":
        check_unfreeze(config, tensors)
    else:
        check_lora(config, tensors)


def unfreeze_shape(config: AdapterConfig) -> Any:
    """The split shape an unfreeze adapter's config says its layers fit: a text backbone's
    (models/split.SplitShape), or with `arch` an image backbone's (models/image_split.py,
    its units blocks and the head conv)."""
    u = config.unfreeze or {}
    if "arch" in u:
        from models.image_split import image_split_shape

        try:
            blocks, split = int(u["backbone_layers"]), int(u["split"])
            shape = image_split_shape(str(u["arch"]), blocks - split)
        except (KeyError, TypeError, ValueError):
            raise AdapterFormatError("an image unfreeze adapter needs its unfreeze settings: layers, split (below the "
                                     "last block), backbone_layers, hidden and a known arch") from None
        if shape.layers != blocks or int(u.get("hidden", 0)) != shape.hidden:
            raise AdapterFormatError(f"an unfreeze adapter of {blocks} blocks and width {u.get('hidden')} does not fit "
                                     f"{shape.arch} ({shape.layers} blocks, width {shape.hidden})")
        return shape
    try:
        return SplitShape(int(u["backbone_layers"]), int(u["split"]), int(u["hidden"]), int(u["intermediate"]))
    except (KeyError, TypeError, ValueError):
        raise AdapterFormatError("an unfreeze adapter needs its unfreeze settings: layers, split, backbone_layers, "
                                 "hidden, intermediate") from None


def check_unfreeze(config: AdapterConfig, tensors: dict[str, np.ndarray]) -> None:
    """An unfreeze adapter's weights: exactly every parameter of its top `layers` layers (all
    at or above the split), each of the shape the split shape gives it."""
    shape = unfreeze_shape(config)
    layers = int((config.unfreeze or {}).get("layers", 0))
    offered = shape.layers - shape.split
    if not 0 <= shape.split < shape.layers or not 1 <= layers <= offered:
        raise AdapterFormatError(f"an unfreeze adapter of {layers} layers on a backbone split at {shape.split} of "
                                 f"{shape.layers} layers: it may carry 1 to {max(offered, 0)} top layers")
    if config.dim != shape.hidden:
        raise AdapterFormatError(f"unfreeze layers of width {shape.hidden} for {config.dim}-d embeddings")
    units = shape.unfrozen_units(layers)  # image: the top blocks and the head conv
    expected = {f"{LAYER_PREFIX}{layer}.{path}": size for layer in units
                for path, size in shape.params_of(layer).items()}
    found = {n for n in tensors if n.startswith(LAYER_PREFIX)}
    if found != set(expected):
        unknown, missing = sorted(found - set(expected)), sorted(set(expected) - found)
        raise AdapterFormatError(
            f"an unfreeze adapter of the top {layers} {shape.unit}s carries layer.<{units[0]}-"
            f"{units[-1]}>.<param path> for every parameter of a {shape.unit}"
            + (" (the head conv is the last)" if shape.unit == "block" else "") + "; "
            + (f"unknown: {unknown[:3]}" if unknown else f"missing: {missing[:3]}"))
    for name, size in expected.items():
        if tuple(tensors[name].shape) != size:
            raise AdapterFormatError(f"unfreeze weight {name!r} has shape {tuple(tensors[name].shape)}, "
                                     f"expected {size}")
    if any(n.startswith(("lora_a.", "lora_b.")) for n in tensors):
        raise AdapterFormatError("an unfreeze adapter carries no LoRA factors")


def check_lora(config: AdapterConfig, tensors: dict[str, np.ndarray]) -> None:
    """A LoRA adapter's factors: paired, one rank, within bounds, only known targets."""
    names = [n for n in tensors if n.startswith(("lora_a.", "lora_b."))]
    if config.method == "head":
        if names:
            raise AdapterFormatError("a head adapter carries no LoRA factors")
        return
    if not config.lora or not names:
        raise AdapterFormatError("a lora adapter needs its lora settings and factors")
    rank = int(config.lora.get("rank", 0))
    if not 1 <= rank <= MAX_LORA_RANK:
        raise AdapterFormatError(f"LoRA rank {rank} is outside 1-{MAX_LORA_RANK}")
    for name in names:
        key = name[len("lora_a.") :]
        layer, _, target = key.partition(".")
        if not layer.isdigit() or target not in TARGETS:
            raise AdapterFormatError(f"unknown LoRA factor {name!r}")
        a, b = tensors.get("lora_a." + key), tensors.get("lora_b." + key)
        if a is None or b is None or a.ndim != 2 or b.ndim != 2 or a.shape[1] != rank or b.shape[0] != rank:
            raise AdapterFormatError(f"LoRA factors of {key!r} must be A (d_in, {rank}) and B ({rank}, d_out)")


def head_width(config: AdapterConfig, tensors: dict[str, np.ndarray], dim: int) -> int:
    """What the head reads: the backbone's dim-d vector, or (lexical, hybrid) the n-gram
    features (and the vector)."""
    lexical = config.method in lex.LEXICAL_METHODS
    if lexical != any(n.startswith(lex.PREFIX) for n in tensors):
        raise AdapterFormatError(f"a {config.method} adapter carries " + ("its vocabulary" if lexical else "no vocabulary"))
    if not lexical:
        return dim
    try:
        lex.check(config.lexical, without_factors(tensors), len(config.labels), dim)
    except lex.LexicalFormatError as e:
        raise AdapterFormatError(str(e)) from None
    return lex.width(config.lexical, tensors, dim)


def check_tensors(head: str, tensors: dict[str, np.ndarray], dim: int, n_labels: int) -> None:
    """Shapes a head of this kind must have; ValueError says which tensor and how to fix."""
    if head not in HEAD_KINDS:
        raise AdapterFormatError(f"unknown head kind {head!r}: use one of {sorted(HEAD_KINDS)}")
    missing = set(HEAD_KINDS[head]) - set(tensors)
    if missing:
        raise AdapterFormatError(f"{head} head lacks tensors {sorted(missing)}")
    if head == "linear":
        expected = {"weight": (n_labels, dim), "bias": (n_labels,)}
    else:
        hidden = tensors["w1"].shape[0]
        expected = {"w1": (hidden, dim), "b1": (hidden,), "w2": (n_labels, hidden), "b2": (n_labels,)}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise AdapterFormatError(
                f"{head} head tensor {name!r} has shape {tuple(tensors[name].shape)}, expected {shape} "
                f"(embedding dim {dim}, {n_labels} labels): rebuild the head for this backbone"
            )


def encode(config: AdapterConfig, tensors: dict[str, np.ndarray]) -> tuple[AdapterConfig, bytes]:
    """Serialise a new version: the config gains the SHA-256 of the safetensors bytes."""
    check_tensors(config.head, tensors, head_width(config, tensors, config.dim), len(config.labels))
    check_method(config, tensors)
    # Floats are stored as float32; a lexical vocabulary's bytes and offsets keep their integer type.
    weights = st_save({k: np.ascontiguousarray(v, dtype=v.dtype if k.startswith(lex.PREFIX) and v.dtype.kind in "iu"
                                               else np.float32) for k, v in tensors.items()})
    if config.method in lex.LEXICAL_METHODS and len(weights) > lex.MAX_BYTES:
        raise AdapterFormatError(f"a {config.method} adapter of {len(weights):,} bytes: at most {lex.MAX_BYTES:,}")
    sealed = AdapterConfig(**{**asdict(config), "weights_sha256": hashlib.sha256(weights).hexdigest()})
    return sealed, weights


def decode(
    config_json: bytes | str,
    weights: bytes,
    *,
    fingerprint: str,
    dim: int,
    version: int = 0,
    split: int | None = None,
) -> Adapter:
    """Verify and load a stored version for a backbone with this fingerprint and dim (and,
    for LoRA adapters, this split layer)."""
    config = AdapterConfig.from_json(config_json)
    digest = hashlib.sha256(weights).hexdigest()
    if digest != config.weights_sha256:
        raise AdapterFormatError(
            f"adapter weights checksum mismatch (stored {config.weights_sha256[:12]}…, read {digest[:12]}…): "
            "the version is corrupt or was tampered with; promote another version"
        )
    if config.fingerprint != fingerprint:
        raise AdapterFormatError(
            f"adapter was built for backbone {config.backbone!r} with fingerprint {config.fingerprint[:12]}…, "
            f"but the loaded backbone has {fingerprint[:12]}…: retrain or recreate the adapter on this backbone"
        )
    if config.dim != dim:
        raise AdapterFormatError(f"adapter expects {config.dim}-d embeddings, the backbone gives {dim}-d")
    try:
        tensors = st_load(weights)
    except Exception as e:
        raise AdapterFormatError(f"adapter weights are not valid safetensors: {e}") from e
    if config.method in lex.LEXICAL_METHODS and len(weights) > lex.MAX_BYTES:
        raise AdapterFormatError(f"a {config.method} adapter of {len(weights):,} bytes: at most {lex.MAX_BYTES:,}")
    check_tensors(config.head, tensors, head_width(config, tensors, dim), len(config.labels))
    check_method(config, tensors)
    deep = config.lora or config.unfreeze
    kind = "a LoRA" if config.lora else "an unfreeze"
    setting = "GRAFT_IMAGE_SPLIT_BLOCKS" if deep and "arch" in deep else "GRAFT_SPLIT_LAYERS"  # image: blocks
    if deep and split is not None and int(deep["split"]) != split:
        raise AdapterFormatError(
            f"adapter adapts the layers from {deep['split']} up, but this backbone is split at layer "
            f"{split} ({setting}): serve it where the split matches, or retrain it")
    if deep and split is None:
        raise AdapterFormatError(f"{kind} adapter needs a split backbone ({setting} > 0) to serve it")
    adapter = Adapter(config=config, tensors=tensors, version=version)
    _ = adapter.lexical  # lexical, hybrid: the vectoriser rebuilt (its vocabulary checked) at load, not at a predict
    return adapter


def deep_tensors(deep: LoraFactors | UnfrozenLayers) -> dict[str, np.ndarray]:
    """A deep adapter's tensors as a version stores them (the inverse of `Adapter.deep`)."""
    if isinstance(deep, UnfrozenLayers):
        return {LAYER_PREFIX + name: w for name, w in deep.weights.items()}
    return {f"lora_{ab}.{key}": m for key, (a, b) in deep.factors.items() for ab, m in (("a", a), ("b", b))}


def write_dir(path: Path, config: AdapterConfig, weights: bytes) -> None:
    """On-disk layout of one version (export, inspection): config.json + head.safetensors."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "head.safetensors").write_bytes(weights)
    (path / "config.json").write_bytes(config.to_json())


def read_dir(path: Path) -> tuple[bytes, bytes]:
    return (path / "config.json").read_bytes(), (path / "head.safetensors").read_bytes()
