"""Build a backbone's ONNX artifacts: export, ORT transformer optimisation, int8 and fp16.

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

PRECISIONS = ("fp32", "int8", "fp16")

EXPORT_SETTINGS: dict[str, Any] = {
    "format": 2,  # bump when the export code changes what it writes
    "opset": 17,
    "attention": "eager",  # sdpa exports are not matched by ORT's attention fusion
    "exporter": "torchscript",
    "optimizer": {"model_type": "bert", "opt_level": 1},
    "int8": {"per_channel": True, "weight_type": "QInt8", "op_types": ["MatMul", "Attention"]},
    "fp16": {"keep_io_types": True},
}

# Image CNNs: no transformer fusions; int8 is static (QDQ, scales calibrated once), since
# dynamic quantisation would pick activation scales per call and couple a batch's rows.
IMAGE_EXPORT_SETTINGS: dict[str, Any] = {
    "format": 1,
    "opset": 17,
    "exporter": "torchscript",
    # Clip (ReLU6) and Add must be listed: then a Conv's output is quantised over the
    # ReLU6 range [0, 6] rather than its raw range (without them: mean cosine 0.79 to fp32).
    "int8": {"format": "QDQ", "per_channel": True, "activation": "QUInt8", "weight": "QInt8",
             "op_types": ["Conv", "Clip", "Add"], "calibration": "MinMax", "calibration_images": 48},
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
        "int8_exclude": list(spec.int8_exclude),
        "versions": library_versions(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def artifact_dir(spec: BackboneSpec, home: Path) -> Path:
    return Path(home) / "backbones" / artifact_key(spec)


def ensure_artifact(spec: BackboneSpec, precision: str, home: Path) -> Path:
    """Path of the ready ONNX file for this precision, building whatever is missing."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {PRECISIONS}")
    folder = artifact_dir(spec, home)
    target = folder / f"{precision}.onnx"
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder / ".lock"):
        if not target.is_file():
            _build(spec, precision, folder)
    return target


def _build(spec: BackboneSpec, precision: str, folder: Path) -> None:
    raw = folder / "raw.onnx"
    if not raw.is_file():
        log.info("exporting %s to ONNX (first run; cached in %s)", spec.id, folder)
        with _atomic(raw) as tmp:
            export_onnx(spec, tmp)
        _write_manifest(spec, folder)
    if spec.kind == "image":
        _build_image(spec, precision, folder)
    elif precision == "fp32":
        with _atomic(folder / "fp32.onnx") as tmp:
            _optimize(spec, raw, tmp, use_gpu=False)
    elif precision == "int8":
        fp32 = folder / "fp32.onnx"
        if not fp32.is_file():
            _build(spec, "fp32", folder)
        with _atomic(folder / "int8.onnx") as tmp:
            _quantize_int8(spec, fp32, tmp)
    elif precision == "fp16":
        with _atomic(folder / "fp16.onnx") as tmp:
            _optimize(spec, raw, tmp, use_gpu=True, fp16=True)
    log.info("built %s %s artifact in %s", spec.id, precision, folder)


def _write_manifest(spec: BackboneSpec, folder: Path) -> None:
    manifest = {
        "backbone": spec.id,
        "fingerprint": spec.fingerprint,
        "source": str(spec.path),
        "settings": export_settings(spec),
        "int8_exclude": list(spec.int8_exclude),
        "versions": library_versions(),
    }
    with _atomic(folder / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))


@contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextmanager
def _atomic(target: Path) -> Iterator[Path]:
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


def _quantize_int8(spec: BackboneSpec, fp32: Path, out: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    settings = EXPORT_SETTINGS["int8"]
    graph = onnx.load(str(fp32), load_external_data=False).graph
    excluded = [n.name for n in graph.node if any(pat in n.name for pat in spec.int8_exclude)]
    quantize_dynamic(
        str(fp32),
        str(out),
        per_channel=settings["per_channel"],
        weight_type=QuantType.QInt8,
        op_types_to_quantize=settings["op_types"],
        nodes_to_exclude=excluded,
        # The fused Attention/SkipLayerNorm ops are in the com.microsoft domain, where
        # shape inference gives no types; their outputs are float.
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _build_image(spec: BackboneSpec, precision: str, folder: Path) -> None:
    """fp32: the exported graph (ORT fuses Conv+BN+ReLU6 when it loads it); int8: static
    QDQ with calibration on synthetic images; fp16: weights in half precision."""
    import shutil

    raw = folder / "raw.onnx"
    if precision == "fp32":
        with _atomic(folder / "fp32.onnx") as tmp:
            shutil.copyfile(raw, tmp)
    elif precision == "int8":
        with _atomic(folder / "int8.onnx") as tmp:
            _quantize_image_int8(spec, raw, tmp)
    elif precision == "fp16":
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load(str(raw)), keep_io_types=IMAGE_EXPORT_SETTINGS["fp16"]["keep_io_types"])
        with _atomic(folder / "fp16.onnx") as tmp:
            onnx.save(model, str(tmp))


def _quantize_image_int8(spec: BackboneSpec, raw: Path, out: Path) -> None:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from models.image import calibration_images

    settings = IMAGE_EXPORT_SETTINGS["int8"]
    images = calibration_images(settings["calibration_images"], spec.image_size)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"pixels": images[i : i + 8]} for i in range(0, len(images), 8)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self._batches, None)

    prepared = out.with_name(out.stem + ".pre.onnx")
    try:
        quant_pre_process(str(raw), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=settings["per_channel"],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=settings["op_types"],
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)
