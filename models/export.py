"""Build a backbone's ONNX artifacts: export, ORT transformer optimisation and fp16 (int8
recipes and their accuracy gate: models/int8.py).

Artifacts live under GRAFT_HOME/backbones/<artifact key>/, where the key hashes the
weights fingerprint, the export settings and the library versions: change any of them and
the artifacts are rebuilt. Every file is written under a temporary name and renamed into
place, and builds take a file lock, so a half-written model is never loaded and two
processes never build the same file at once.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from models.catalog import BackboneSpec

log = logging.getLogger(__name__)

# int8 graphs are built and gated per processor in models/int8.py.
PRECISIONS = ("fp32", "fp16")

EXPORT_SETTINGS: dict[str, Any] = {
    "format": 2,  # bump when the export code changes what it writes
    "opset": 17,
    "attention": "eager",  # sdpa exports are not matched by ORT's attention fusion
    "exporter": "torchscript",
    # model_type: the BERT family's; each family's own is in models/families.py (the artifact
    # key follows it through the fingerprint's config.json).
    "optimizer": {"model_type": "bert", "opt_level": 1},
    "fp16": {"keep_io_types": True},
}

# Image CNNs: no transformer fusions. The graph has a second output, the logits of the
# backbone's own ImageNet classifier, which the int8 gate compares (top-1 agreement).
IMAGE_EXPORT_SETTINGS: dict[str, Any] = {
    "format": 2,
    "opset": 17,
    "exporter": "torchscript",
    "outputs": ["embeddings", "logits"],
    "fp16": {"keep_io_types": True},
}


# Image backbones from a Hugging Face directory (models/hf_image.py): uint8 pixels in, the
# L2-normalised pooled output out; no classifier logits (int8: none offered, models/int8.py).
# CLIP adds its text tower, a graph of its own (ensure_text_tower).
HF_IMAGE_EXPORT_SETTINGS: dict[str, Any] = {
    "format": 1,
    "opset": 17,
    "exporter": "torchscript",
    "attention": "eager",
    "outputs": ["embeddings"],
    "fp16": {"keep_io_types": True},
}


def export_settings(spec: BackboneSpec) -> dict[str, Any]:
    if spec.hf_image:
        return HF_IMAGE_EXPORT_SETTINGS
    return IMAGE_EXPORT_SETTINGS if spec.kind == "image" else EXPORT_SETTINGS


def library_versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "transformers", "efficientnet-lite-pytorch", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def artifact_key(spec: BackboneSpec) -> str:
    payload = {
        "fingerprint": spec.fingerprint,
        "settings": export_settings(spec),
        "versions": library_versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def artifact_dir(spec: BackboneSpec, home: Path) -> Path:
    if _PREPARED.get() is not None:  # read-only artifacts: the folder `prepare` recorded
        return Path(home) / "backbones" / prepared_key(spec, home)
    return Path(home) / "backbones" / artifact_key(spec)


# -- prepared artifacts (GRAFT_PREPARED=required) --------------------------------------------
# `prepare` (service/cli.py) is the one place artifacts are built: at image build or by a
# Kubernetes Job into a volume that serving pods mount read-only. A serving process there has
# neither torch nor transformers (the `export` extra): it loads ready files only and refuses to
# start, naming the missing file and the command that builds it, rather than export.

# What the graphs run on: prepared artifacts serve only where these are the same versions.
RUNTIME_DISTS = ("onnx", "onnxruntime", "onnxruntime-gpu")


class ArtifactMissingError(RuntimeError):
    """GRAFT_PREPARED=required and an artifact that `prepare` builds is not there (or was
    built for other weights or another runtime)."""


@dataclass(frozen=True)
class PreparedOnly:
    """Only prepared artifacts are used. `local`: a writable directory (the serving process's
    own GRAFT_HOME) for what depends on this node alone: the int8 gates' verdicts for a CPU
    that `prepare` did not run on (measured with ONNX Runtime only, from prepared graphs)."""

    local: Path


_PREPARED: ContextVar[PreparedOnly | None] = ContextVar("graft_prepared_only", default=None)


@contextmanager
def prepared_only(local: Path | None) -> Iterator[None]:
    """Within: nothing is exported or built (`local` None: as usual, build what is missing)."""
    token = _PREPARED.set(PreparedOnly(Path(local)) if local is not None else None)
    try:
        yield
    finally:
        _PREPARED.reset(token)


def prepare_command(spec: BackboneSpec, home: Path) -> str:
    return (f"build it with `GRAFT_HOME={home} python -m service.cli prepare {spec.id}` (`graft prepare`, where "
            "torch and transformers are installed: pip install '.[export]'), at image build or with the prepare Job "
            "(k8s/base/prepare.yaml)")


def require(spec: BackboneSpec, home: Path, paths: tuple[Path, ...], what: str) -> None:
    """Under prepared_only: raise ArtifactMissingError naming the first missing file."""
    if _PREPARED.get() is None:
        return
    for path in paths:
        if not path.is_file():
            raise ArtifactMissingError(
                f"backbone {spec.id!r}: {what} is not prepared ({path} is missing) and GRAFT_PREPARED=required "
                f"(this process exports nothing): {prepare_command(spec, home)}")


def runtime_versions() -> dict[str, str]:
    return {k: v for k, v in library_versions().items() if k in RUNTIME_DISTS}


def prepared_index(spec: BackboneSpec, home: Path) -> Path:
    return Path(home) / "backbones" / "prepared" / f"{spec.id}.json"


def record_prepared(spec: BackboneSpec, home: Path, **extra: Any) -> Path:
    """What `prepare` leaves for serving processes: the artifact folder of this backbone,
    found without the export libraries (their versions are part of the artifact key), and what
    it was built from, checked when it is read."""
    index = prepared_index(spec, home)
    index.parent.mkdir(parents=True, exist_ok=True)
    record = {"backbone": spec.id, "fingerprint": spec.fingerprint, "artifact_key": artifact_key(spec),
              "settings": export_settings(spec), "runtime": runtime_versions(), "versions": library_versions(),
              **extra}
    with atomic_write(index) as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=str))
    return index


def prepared_key(spec: BackboneSpec, home: Path) -> str:
    """The artifact key `prepare` recorded for this backbone, checked against these weights,
    this export code and this runtime."""
    index = prepared_index(spec, home)
    if not index.is_file():
        raise ArtifactMissingError(
            f"backbone {spec.id!r} is not prepared in {home} ({index} is missing) and GRAFT_PREPARED=required "
            f"(this process exports nothing): {prepare_command(spec, home)}")
    record = json.loads(index.read_text())
    if record["fingerprint"] != spec.fingerprint:
        why = f"was prepared from other weights (fingerprint {record['fingerprint']}, now {spec.fingerprint})"
    elif record["settings"] != json.loads(json.dumps(export_settings(spec))):
        why = "was prepared by another version of Graft's export (its settings differ)"
    elif record["runtime"] != runtime_versions():
        why = f"was prepared for {record['runtime']}, this process runs {runtime_versions()}"
    else:
        return str(record["artifact_key"])
    raise ArtifactMissingError(f"backbone {spec.id!r} {why} ({index}): prepare it again: {prepare_command(spec, home)}")


def lock_dir(spec: BackboneSpec, home: Path) -> Path:
    """Where this backbone's per-node verdicts are written (and their lock taken): beside the
    artifacts, or under prepared_only, in the process's own writable directory."""
    mode = _PREPARED.get()
    folder = artifact_dir(spec, home) if mode is None else mode.local / "gates" / prepared_key(spec, home)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def verdict_file(spec: BackboneSpec, home: Path, name: str) -> Path:
    """A per-CPU gate verdict: the prepared one when `prepare` ran on this kind of CPU, else
    this process's own (lock_dir)."""
    prepared = artifact_dir(spec, home) / name
    return prepared if prepared.is_file() else lock_dir(spec, home) / name


def ensure_artifact(spec: BackboneSpec, precision: str, home: Path) -> Path:
    """Path of the ready ONNX file for this precision, building whatever is missing."""
    if precision not in PRECISIONS:
        hint = " (int8 graphs: models.int8.choose_int8)" if precision == "int8" else ""
        raise ValueError(f"unknown precision {precision!r}: use one of {PRECISIONS}{hint}")
    folder = artifact_dir(spec, home)
    target = folder / f"{precision}.onnx"
    if target.is_file():
        return target
    require(spec, home, (target,), f"the {precision} graph")
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / ".lock"):
        if not target.is_file():
            _build(spec, precision, folder)
    return target


def ensure_split(spec: BackboneSpec, shape: Any, home: Path) -> tuple[Path, Path]:
    """Paths of the lower and upper fp32 graphs of a text backbone split at `shape.split`
    (models/split.py), exporting them when missing."""
    from models.split import export_split

    lower, upper = _ensure_split_files(spec, shape, home, ("lower-{tag}.onnx", "upper-{tag}.onnx"), export_split,
                                       "split at layer {split} (deep adapters)")
    return lower, upper


def ensure_upper_weights(spec: BackboneSpec, shape: Any, home: Path) -> tuple[Path, Path]:
    """Paths of the upper_weights fp32 graph of a text backbone split at `shape.split` (every
    upper-layer parameter an input: unfreeze adapters) and of its pretrained weights
    (safetensors), exporting them when missing."""
    from models.split import export_upper_weights

    graph, weights = _ensure_split_files(spec, shape, home, ("upper-weights-{tag}.onnx",
                                                             "upper-weights-{tag}.safetensors"),
                                         export_upper_weights,
                                         "upper layers from {split} with their weights as inputs (unfreeze adapters)")
    return graph, weights


def ensure_image_split(spec: BackboneSpec, shape: Any, home: Path) -> tuple[Path, ...]:
    """Paths of the lower and upper_weights fp32 graphs of an image backbone split at block
    `shape.split` (models/image_split.py: unfreeze adapters) and of its pretrained upper
    weights (safetensors), exporting them when missing."""
    from models.image_split import IMAGE_SPLIT_SETTINGS, export_image_split

    return _ensure_split_files(spec, shape, home, ("lower-{tag}.onnx", "upper-weights-{tag}.onnx",
                                                   "upper-weights-{tag}.safetensors"),
                               export_image_split, "split at block {split} (unfreeze adapters)",
                               version=f"i{IMAGE_SPLIT_SETTINGS['format']}")


def ensure_text_tower(spec: BackboneSpec, home: Path) -> tuple[Path, Path]:
    """A CLIP backbone's text tower (fp32 graph: input_ids, attention_mask -> projected unit
    vectors) and its logit scale (JSON), exporting them when missing."""
    from models.hf_image import export_text_tower

    folder = artifact_dir(spec, home)
    graph, meta = folder / "text-tower.onnx", folder / "text-tower.json"
    if graph.is_file() and meta.is_file():
        return graph, meta
    require(spec, home, (graph, meta), "the text tower")
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / ".lock"):
        if not (graph.is_file() and meta.is_file()):
            log.info("exporting %s text tower to ONNX", spec.id)
            with atomic_write(graph) as g, atomic_write(meta) as m:
                export_text_tower(spec, g, m, HF_IMAGE_EXPORT_SETTINGS["opset"])
    return graph, meta


def _ensure_split_files(spec: BackboneSpec, shape: Any, home: Path, names: tuple[str, ...],
                        export: Any, what: str, version: str | None = None) -> tuple[Path, ...]:
    """Files `export(spec, shape, *paths)` writes together, under the artifact folder, named
    by the split layer and the export format (`version`; default: the text split's);
    built once, under the folder's lock."""
    from contextlib import ExitStack

    from models.split import SPLIT_SETTINGS

    folder = artifact_dir(spec, home)
    tag = f"s{shape.split}-{version or 'v' + str(SPLIT_SETTINGS['format'])}"
    paths = tuple(folder / name.format(tag=tag) for name in names)
    if all(p.is_file() for p in paths):
        return paths
    require(spec, home, paths, "the graphs " + what.format(split=shape.split))
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / ".lock"):
        if not all(p.is_file() for p in paths):
            log.info("exporting %s %s", spec.id, what.format(split=shape.split))
            with ExitStack() as stack:
                export(spec, shape, *(stack.enter_context(atomic_write(p)) for p in paths))
    return paths


def _build(spec: BackboneSpec, precision: str, folder: Path) -> None:
    raw = folder / "raw.onnx"
    if not raw.is_file():
        log.info("exporting %s to ONNX (first run; cached in %s)", spec.id, folder)
        with atomic_write(raw) as tmp:
            export_onnx(spec, tmp)
        _write_manifest(spec, folder)
    if spec.kind == "image":
        _build_image(spec, precision, folder)
    elif precision == "fp32":
        with atomic_write(folder / "fp32.onnx") as tmp:
            _optimize(spec, raw, tmp, use_gpu=False)
    elif precision == "fp16":
        with atomic_write(folder / "fp16.onnx") as tmp:
            _optimize(spec, raw, tmp, use_gpu=True, fp16=True)
    log.info("built %s %s artifact in %s", spec.id, precision, folder)


def _write_manifest(spec: BackboneSpec, folder: Path) -> None:
    manifest = {
        "backbone": spec.id,
        "fingerprint": spec.fingerprint,
        "source": str(spec.path),
        "settings": export_settings(spec),
        "versions": library_versions(),
    }
    with atomic_write(folder / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def atomic_write(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside target; rename it into place only if the body succeeds."""
    tmp = target.with_name(f".{target.stem}.{os.getpid()}.partial{target.suffix}")
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def load_torch_encoder(spec: BackboneSpec):  # -> TorchTextEncoder (torch imported lazily)
    """The frozen torch model with the same pooling, Dense modules and normalisation as the
    ONNX graph: (input_ids, attention_mask) -> unit vectors, whatever the family (models that
    take token_type_ids get zeros, as a single-segment text has)."""
    import inspect

    import torch
    from transformers import AutoModel

    from models.split import pool

    class TorchTextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_pretrained(
                str(spec.path), attn_implementation="eager", local_files_only=True
            )
            self.takes_token_types = "token_type_ids" in inspect.signature(self.encoder.forward).parameters
            self.dense = torch.nn.ModuleList(dense_modules(spec))

        def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if self.takes_token_types else {}
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            return pool(hidden, attention_mask, spec.pooling, self.dense)

    model = TorchTextEncoder().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


_ACTIVATIONS = {"torch.nn.modules.activation.Tanh": "Tanh", "torch.nn.modules.linear.Identity": "Identity",
                "torch.nn.modules.activation.ReLU": "ReLU", "torch.nn.modules.activation.GELU": "GELU"}


def dense_modules(spec: BackboneSpec) -> list:  # -> list[torch.nn.Module]
    """The sentence-transformers Dense modules of the model (modules.json), in order: a linear
    layer and its activation each, with their saved weights."""
    import torch

    out = []
    for folder in spec.dense:
        path = spec.path / folder
        config = json.loads((path / "config.json").read_text())
        act = config.get("activation_function", "torch.nn.modules.activation.Tanh")
        if act not in _ACTIVATIONS:
            raise ValueError(f"{path / 'config.json'}: Dense activation {act!r} is not supported: {sorted(_ACTIVATIONS)}")
        linear = torch.nn.Linear(int(config["in_features"]), int(config["out_features"]),
                                 bias=bool(config.get("bias", True)))
        if (path / "model.safetensors").is_file():
            from safetensors.torch import load_file

            state = load_file(str(path / "model.safetensors"))
        else:
            state = torch.load(str(path / "pytorch_model.bin"), map_location="cpu", weights_only=True)
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
        out.append(torch.nn.Sequential(linear, getattr(torch.nn, _ACTIVATIONS[act])()))
    return out


def export_onnx(spec: BackboneSpec, out: Path) -> None:
    """Plain fp32 export: pooling and L2 normalisation inside the graph, dynamic axes."""
    if spec.hf_image:
        from models.hf_image import export_image_onnx as export_hf_image

        export_hf_image(spec, out, HF_IMAGE_EXPORT_SETTINGS["opset"])
        return
    if spec.kind == "image":
        from models.image import export_image_onnx

        export_image_onnx(spec, out, IMAGE_EXPORT_SETTINGS["opset"])
        return
    import torch

    from models.text import load_tokenizer

    model = load_torch_encoder(spec)
    tok = load_tokenizer(spec)
    ids, mask, _ = tok.encode(["a short sentence", "a somewhat longer example sentence for export"])
    dyn = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            (torch.from_numpy(ids), torch.from_numpy(mask)),
            str(out),
            dynamo=False,
            opset_version=EXPORT_SETTINGS["opset"],
            input_names=["input_ids", "attention_mask"],
            output_names=["embeddings"],
            dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "embeddings": {0: "batch"}},
        )


def _optimize(spec: BackboneSpec, raw: Path, out: Path, *, use_gpu: bool, fp16: bool = False) -> None:
    """ORT's transformer optimiser of the model's family (models/families.py); a family it
    has no pattern for is served as exported (fp16: weights converted)."""
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig

    from models.families import family_of_dir

    family = family_of_dir(spec.path)
    if family.optimizer is None:
        import shutil

        log.info("no ORT transformer fusion for %s (%s): served as exported", spec.id, family.name)
        if not fp16:
            shutil.copyfile(raw, out)
            return
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        onnx.save(convert_float_to_float16(onnx.load(str(raw)), keep_io_types=EXPORT_SETTINGS["fp16"]["keep_io_types"]),
                  str(out))
        return
    config = AutoConfig.from_pretrained(str(spec.path), local_files_only=True)
    model = optimize_model(
        str(raw),
        model_type=family.optimizer,
        num_heads=config.num_attention_heads,
        hidden_size=config.hidden_size,
        opt_level=EXPORT_SETTINGS["optimizer"]["opt_level"],
        use_gpu=use_gpu,
    )
    log.info("ORT fusions for %s: %s", spec.id, {k: v for k, v in model.get_fused_operator_statistics().items() if v})
    if fp16:
        model.convert_float_to_float16(keep_io_types=EXPORT_SETTINGS["fp16"]["keep_io_types"])
    model.save_model_to_file(str(out))


def _build_image(spec: BackboneSpec, precision: str, folder: Path) -> None:
    """fp32: the exported graph (ORT fuses Conv+BN+ReLU6 when it loads it); fp16: weights in
    half precision."""
    import shutil

    raw = folder / "raw.onnx"
    if precision == "fp32":
        with atomic_write(folder / "fp32.onnx") as tmp:
            shutil.copyfile(raw, tmp)
    elif precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(raw)), keep_io_types=IMAGE_EXPORT_SETTINGS["fp16"]["keep_io_types"])
        with atomic_write(folder / "fp16.onnx") as tmp:
            onnx.save(model, str(tmp))
