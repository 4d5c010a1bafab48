"""Image backbones: PNG/JPEG decoding and the preprocessing the weights were trained with,
feeding an ONNX CNN whose global-average-pooled features are the embeddings.

EfficientNet-Lite was trained (TensorFlow, tpu/models/official/efficientnet/lite) on RGB
scaled as (x - 127) / 128, evaluated on a centre crop of 224/256 of the shorter side
resized bicubically to 224 x 224. The same steps run here; the graph takes the cropped
uint8 pixels (N, 224, 224, 3) and does the scaling itself, so ONNX and torch agree exactly.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.base import Backbone, EmbedResult, ItemError
from models.catalog import BackboneSpec
from models.runtime import OrtRunner

# What the weights expect; part of the backbone's fingerprint (models/catalog.py).
PREPROCESSING: dict[str, Any] = {
    "formats": ["PNG", "JPEG"],
    "size": 224,
    "crop_fraction": 224 / 256,
    "resample": "bicubic",
    "mean": 127.0,
    "std": 128.0,
    "alpha": "over white",
    "exif_orientation": True,
}


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one image, checked from its header before it is decoded (GRAFT_MAX_IMAGE_*).

    `max_pixels` counts the pixels actually decoded: a JPEG much larger than the crop is
    decoded at 1/2 to 1/8 scale (a 12-megapixel phone photo decodes to under 1 MP), a PNG
    at full size. 2048 x 2048 is 80 times the 224 x 224 the backbone sees, and bounds one
    decode's transient memory to about 50 MB (RGBA, composited, converted).
    """

    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 2048 * 2048


def open_image(data: bytes, limits: ImageLimits, size: int = PREPROCESSING["size"]) -> Any:
    """The image, opened from its header only (no pixel is decoded yet) and checked against
    the limits at the scale it will be decoded at; or an ItemError. Cheap: the API checks
    fine-tune uploads with it and leaves decoding to the worker."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > limits.max_bytes:
        raise ItemError(f"the image has {len(data)} bytes; the limit is {limits.max_bytes}", too_large=True)
    try:
        img = Image.open(io.BytesIO(data), formats=PREPROCESSING["formats"])
        if img.format == "JPEG":  # decode at a reduced scale when the image is much larger
            img.draft("RGB", (size * 2, size * 2))
    except UnidentifiedImageError:
        raise ItemError("not a PNG or JPEG image") from None
    except Image.DecompressionBombError:
        raise ItemError("the image has too many pixels", too_large=True) from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ItemError(f"the image header cannot be read: {e}") from None
    width, height = img.size
    if width * height > limits.max_pixels:
        raise ItemError(
            f"the image decodes to {width} x {height} pixels; the limit is {limits.max_pixels} pixels "
            "(GRAFT_MAX_IMAGE_PIXELS): scale it down before sending", too_large=True
        )
    if width < 1 or height < 1:
        raise ItemError("the image is empty")
    return img


def decode_image(data: bytes, limits: ImageLimits, size: int = PREPROCESSING["size"]) -> np.ndarray:
    """PNG or JPEG bytes -> the centre crop as uint8 (size, size, 3) RGB, or an ItemError."""
    from PIL import Image, ImageOps

    img = open_image(data, limits, size)
    try:
        img = ImageOps.exif_transpose(img)
        img.load()
        img = _rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ItemError(f"the image cannot be decoded: {e}") from None
    width, height = img.size
    side = min(width, height) * PREPROCESSING["crop_fraction"]
    left, top = (width - side) / 2, (height - side) / 2
    img = img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side))
    return np.asarray(img, dtype=np.uint8)


def _rgb(img: Any) -> Any:
    """Grayscale, palette and CMYK to RGB; transparent pixels over white."""
    from PIL import Image

    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


class ImageBackbone(Backbone):
    kind = "image"

    def __init__(self, spec: BackboneSpec, runner: OrtRunner, limits: ImageLimits | None = None,
                 split: Any = None, text_tower: Any = None) -> None:
        self.spec = spec
        # CLIP-style dual encoders (models/hf_image.TextTower): label prompts embedded in the
        # image space, for zero-shot image adapters (service/versions.py); None: images only.
        self.text_tower = text_tower
        self.split = split  # models/image_split.ImageSplitRunner (unfreeze adapters), or None: head-only
        self.id = spec.id
        self.fingerprint = spec.fingerprint
        self.limits = limits or ImageLimits()
        self.size = spec.image_size
        self._runner = runner
        self.provider = runner.provider
        self.precision = runner.precision
        # Images per ORT call: the int8 graph is statically quantised (fixed scales), so
        # rows never influence each other and any slicing gives the same vectors.
        self.max_rows = 8 if self.provider == "CPUExecutionProvider" else 128
        probe = np.zeros((1, self.size, self.size, 3), dtype=np.uint8)
        self.dim = int(self._runner.run(probe).shape[1])

    def prepare(self, item: Any) -> np.ndarray:
        if isinstance(item, np.ndarray) and item.shape == (self.size, self.size, 3) and item.dtype == np.uint8:
            return item
        if not isinstance(item, (bytes, bytearray, memoryview)):
            kind = "text" if isinstance(item, str) else type(item).__name__
            raise ItemError(f'backbone {self.id!r} embeds images: send {{"image": "<base64 PNG or JPEG>"}}, not {kind}')
        if self.spec.hf_image:  # the model's own preprocessing (preprocessor_config.json)
            from models.hf_image import decode

            return decode(bytes(item), self.limits, self.spec.preprocessing)
        return decode_image(bytes(item), self.limits, self.size)

    def check(self, item: Any) -> None:
        """The header only: format, and pixels within the limits (fine-tune uploads)."""
        if not isinstance(item, (bytes, bytearray, memoryview)):
            self.prepare(item)
            return
        if self.spec.hf_image:
            kind, a, b = self.spec.preprocessing.resize
            open_image(bytes(item), self.limits, max(a, b, self.size))
            return
        open_image(bytes(item), self.limits, self.size)

    def embed(self, items: list[Any]) -> EmbedResult:
        if not items:
            return EmbedResult(vectors=np.empty((0, self.dim), dtype=np.float32), truncated=[])
        pixels = np.stack([self.prepare(item) for item in items])
        chunks = [self._runner.run(pixels[i : i + self.max_rows]) for i in range(0, len(pixels), self.max_rows)]
        return EmbedResult(vectors=np.concatenate(chunks), truncated=[False] * len(items), calls=len(chunks))

    # -- unfreeze adapters: the split graphs (models/image_split.py) ------------------------

    @property
    def split_shape(self) -> Any:
        return self.split.shape if self.split else None

    @property
    def hidden_key(self) -> str:
        """What `hidden_states` depend on, keying their cache (adapters/pipeline.py
        hidden_cached), as TextBackbone.hidden_key: the weights and preprocessing, the split
        block and the lower graph (its file, its precision)."""
        split = self._require_split()
        return f"{self.fingerprint}:b{split.shape.split}:{Path(split.lower.model_path).stem}:{split.lower.precision}"

    def hidden_states(self, items: list[Any]) -> list[np.ndarray]:
        """The lower graph's feature map per image, (positions, channels) each, kept in float16
        (training reads them back as float32): computed once per example by the fp32 lower
        graph that serves unfreeze rows."""
        split = self._require_split()
        if not items:
            return []
        pixels = np.stack([self.prepare(item) for item in items])
        out: list[np.ndarray] = []
        for i in range(0, len(pixels), self.max_rows):
            out += list(split.lower.run(pixels[i : i + self.max_rows]).astype(np.float16))
        return out

    def embed_deep(self, items: list[Any], deep: list[Any]) -> EmbedResult:
        """Embed through the split graphs, each row with its unfreeze adapter's layers
        (models/split.UnfrozenLayers) or None (the pretrained weights): one lower call per
        `max_rows` images for all rows, whatever their adapters, then per adapter one
        upper_weights call per `max_rows` of its rows (each call feeds the adapter's weights)."""
        from models.split import UnfrozenLayers

        split = self._require_split()
        if not items:
            return EmbedResult(vectors=np.empty((0, self.dim), dtype=np.float32), truncated=[])
        for layers in deep:
            if layers is not None and not isinstance(layers, UnfrozenLayers):
                raise ValueError(f"backbone {self.id!r} serves unfreeze adapters only, not {type(layers).__name__}")
        pixels = np.stack([self.prepare(item) for item in items])
        hidden = np.concatenate([split.lower.run(pixels[i : i + self.max_rows])
                                 for i in range(0, len(pixels), self.max_rows)])
        calls = -(-len(pixels) // self.max_rows)
        groups: dict[int, list[int]] = {}
        for i, layers in enumerate(deep):
            groups.setdefault(id(layers), []).append(i)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for rows in groups.values():
            for start in range(0, len(rows), self.max_rows):
                chunk = rows[start : start + self.max_rows]
                out[chunk] = split.upper(hidden[chunk], deep[chunk[0]])
                calls += 1
        return EmbedResult(vectors=out, truncated=[False] * len(items), calls=calls)

    def upper_module(self):  # -> torch.nn.Module (torch imported lazily)
        """The upper blocks and head conv in torch (frozen, pretrained), for training."""
        from models.image_split import build_image_modules

        return build_image_modules(self.spec, self._require_split().shape)[1]

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.spec.hf_image:
            out.update(family=self.spec.family, pooling=self.spec.pooling, image_size=self.size,
                       preprocessing=self.spec.preprocessing.as_dict())
        if self.text_tower is not None:
            out["zero_shot"] = {"prompt": self.text_tower.prompt, "logit_scale": round(self.text_tower.logit_scale, 4),
                                "text_tower": "CLIP text encoder, projected, L2-normalised"}
        if self.split is not None:
            shape = self.split.shape
            out["deep_adapters"] = {"methods": ["unfreeze"], "layers": shape.layers - shape.split,
                                    "split": shape.split, "unit": "block", "precision": self.split.lower.precision}
        return out

    def _require_split(self) -> Any:
        if self.split is None:
            raise ValueError(f"backbone {self.id!r} is not split: unfreeze adapters need GRAFT_IMAGE_SPLIT_BLOCKS > 0")
        return self.split


# -- building the graph (export time only; torch imported lazily) ---------------------------


def load_torch_image_encoder(spec: BackboneSpec):  # -> torch.nn.Module
    """The frozen CNN: uint8 NHWC pixels -> scaled -> features -> global average pool -> L2."""
    import torch

    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(
            f"backbone {spec.id!r}: building its graphs needs the wheel efficientnet-lite-pytorch (the export "
            "extra; `make install` installs it with --no-deps)") from e

    class TorchImageEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cnn = EfficientNet.from_pretrained(spec.arch, weights_path=str(spec.path))

        def forward(self, pixels):  # type: ignore[no-untyped-def]
            return self.features_and_logits(pixels)[0]

        def features_and_logits(self, pixels):  # type: ignore[no-untyped-def]
            """The L2-normalised pooled features and the ImageNet classifier's logits."""
            x = pixels.permute(0, 3, 1, 2).to(torch.float32)
            x = (x - PREPROCESSING["mean"]) / PREPROCESSING["std"]
            features = self.cnn._avg_pooling(self.cnn.extract_features(x)).flatten(1)
            return torch.nn.functional.normalize(features, p=2, dim=1), self.cnn._fc(features)

    model = TorchImageEncoder().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def export_image_onnx(spec: BackboneSpec, out: Any, opset: int) -> None:
    import torch

    model = load_torch_image_encoder(spec)

    class WithLogits(torch.nn.Module):
        """Embeddings first (what serving reads), then the ImageNet logits (the int8 gate's
        top-1 agreement; one 1280 x 1000 Gemm, about 0.3% of the CNN's multiply-adds)."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = model

        def forward(self, pixels):  # type: ignore[no-untyped-def]
            return self.encoder.features_and_logits(pixels)

    sample = torch.zeros((2, spec.image_size, spec.image_size, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(
            WithLogits().eval(), (sample,), str(out), dynamo=False, opset_version=opset,
            input_names=["pixels"], output_names=["embeddings", "logits"],
            dynamic_axes={"pixels": {0: "batch"}, "embeddings": {0: "batch"}, "logits": {0: "batch"}},
        )


def calibration_images(count: int = 48, size: int = 224, seed: int = 0) -> np.ndarray:
    """Deterministic synthetic pictures for int8 calibration (no data is downloaded):
    smooth colour fields with shapes, edges, stripes and sensor-like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((count, size, size, 3), dtype=np.uint8)
    for n in range(count):
        img = np.empty((size, size, 3), dtype=np.float32)
        for c in range(3):  # a random low-frequency colour field
            a, b, ph = rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(0, 6.3)
            img[..., c] = 128 + 90 * np.sin(a * xx * 3 + b * yy * 3 + ph) * rng.uniform(0.3, 1)
        for _ in range(rng.integers(2, 7)):  # filled discs and boxes
            colour = rng.uniform(0, 255, 3)
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.35)
            if rng.random() < 0.5:
                mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
            else:
                mask = (abs(xx - cx) < r) & (abs(yy - cy) < r * rng.uniform(0.3, 1.5))
            img[mask] = colour
        if rng.random() < 0.4:  # stripes / texture
            f = rng.uniform(10, 60)
            img += (40 * np.sin(f * (xx + rng.uniform(-1, 1) * yy)))[..., None]
        img += rng.normal(0, rng.uniform(2, 12), img.shape)
        out[n] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def augment(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A light random variant of a prepared image: a horizontal flip (half the time), a
    rotation of up to 10 degrees (corners filled with the mean colour) and brightness,
    contrast and saturation each within 20%."""
    from PIL import Image, ImageEnhance

    img = Image.fromarray(pixels)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    fill = tuple(int(c) for c in pixels.reshape(-1, 3).mean(0))
    img = img.rotate(float(rng.uniform(-10, 10)), resample=Image.Resampling.BILINEAR, fillcolor=fill)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(float(rng.uniform(0.8, 1.2)))
    return np.asarray(img, dtype=np.uint8)
