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


def export_settings(spec: BackboneSpec) -> dict[str, Any]:
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
    return Path(home) / "backbones" / artifact_key(spec)


def ensure_artifact(spec: BackboneSpec, precision: str, home: Path) -> Path:
    """Path of the ready ONNX file for this precision, building whatever is missing."""
    if precision not in PRECISIONS:
        hint = " (int8 graphs: models.int8.choose_int8)" if precision == "int8" else ""
        raise ValueError(f"unknown precision {precision!r}: use one of {PRECISIONS}{hint}")
    folder = artifact_dir(spec, home)
    target = folder / f"{precision}.onnx"
    if target.is_file():
        return target
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
    """The frozen torch model with the same pooling and normalisation as the ONNX graph."""
    import torch
    from transformers import AutoModel

    class TorchTextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = AutoModel.from_pretrained(
                str(spec.path), attn_implementation="eager", local_files_only=True
            )

        def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
            hidden = self.encoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            if spec.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    model = TorchTextEncoder().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def export_onnx(spec: BackboneSpec, out: Path) -> None:
    """Plain fp32 export: pooling and L2 normalisation inside the graph, dynamic axes."""
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
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(spec.path), local_files_only=True)
    model = optimize_model(
        str(raw),
        model_type=EXPORT_SETTINGS["optimizer"]["model_type"],
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
