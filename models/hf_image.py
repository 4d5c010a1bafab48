"""Image backbones from a Hugging Face model directory: ViT, ConvNeXt, ResNet and CLIP.

A family is chosen by config.json `model_type`. Its preprocessing is the model's own, read
from the directory's `preprocessor_config.json` (what its image processor does: resize, centre
crop, rescale, mean/std), not EfficientNet's: decoding and the geometric steps (resize, crop)
run in PIL as the processor's PIL backend runs them, and the graph takes the resulting uint8
pixels (N, size, size, 3) and rescales and normalises them itself, so ONNX and torch agree.

The embedding is each family's pooled output, L2-normalised: ViT's pooler (dense + tanh on the
CLS token) where the checkpoint has its weights, else the CLS token after the final layer norm
(a ViTForImageClassification checkpoint has no pooler), or as the catalogue's `pooling` says
(cls, mean); ConvNeXt's and ResNet's pooled output; CLIP's image embedding (the vision
tower's pooled output through its projection). CLIP's text tower is a second graph: the
projected, L2-normalised text embeddings of label prompts, for zero-shot image classifiers
(service/versions.py), with the model's logit scale.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.base import ItemError


class UnsupportedImageFamilyError(ValueError):
    """The directory's model_type is not an image family Graft exports."""


@dataclass(frozen=True)
class ImageFamily:
    name: str
    model_types: tuple[str, ...]
    poolings: tuple[str, ...]  # what the catalogue may choose; the first is the default
    example: str = ""


IMAGE_FAMILIES: tuple[ImageFamily, ...] = (
    # "pooler": the checkpoint's pooler when it has one, else "cls" (resolved at spec time).
    ImageFamily("vit", ("vit",), ("pooler", "cls", "mean"), example="google/vit-base-patch16-224-in21k"),
    ImageFamily("convnext", ("convnext",), ("pooler",), example="facebook/convnext-tiny-224"),
    ImageFamily("resnet", ("resnet",), ("pooler",), example="microsoft/resnet-50"),
    ImageFamily("clip", ("clip",), ("projection",), example="openai/clip-vit-base-patch32"),
)
DEFAULT_PROMPT = "a photo of a {label}"
# PIL resampling filters by the processors' numbers (PILImageResampling).
_RESAMPLE = {0: "NEAREST", 1: "LANCZOS", 2: "BILINEAR", 3: "BICUBIC", 4: "BOX", 5: "HAMMING"}


def image_family_of(model_type: str) -> ImageFamily:
    for family in IMAGE_FAMILIES:
        if model_type in family.model_types:
            return family
    known = sorted(t for f in IMAGE_FAMILIES for t in f.model_types)
    raise UnsupportedImageFamilyError(
        f"model_type {model_type!r} is not an image family Graft exports: supported {known}")


def is_image_dir(path: Path) -> bool:
    """A Hugging Face directory of one of the image families (by config.json model_type)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    model_type = str(json.loads(config.read_text()).get("model_type", ""))
    return any(model_type in f.model_types for f in IMAGE_FAMILIES)


# -- preprocessing -------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """What the model's image processor does, as data (part of the backbone's fingerprint)."""

    resize: tuple[str, int, int]  # ("exact", height, width) or ("shortest_edge", side, 0); side 0: no resize
    crop: int  # centre crop side after the resize; 0: none
    resample: str  # PIL filter name
    rescale: float  # multiplies the uint8 pixels (1/255), or 1.0
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def size(self) -> int:
        """The square side the graph takes."""
        if self.crop:
            return self.crop
        kind, height, width = self.resize
        return height

    def as_dict(self) -> dict[str, Any]:
        return {"resize": list(self.resize), "crop": self.crop, "resample": self.resample, "rescale": self.rescale,
                "mean": list(self.mean), "std": list(self.std), "formats": ["PNG", "JPEG"], "alpha": "over white",
                "exif_orientation": True}

    def geometry(self, img: Any) -> np.ndarray:
        """A decoded RGB PIL image -> uint8 (size, size, 3): the processor's resize and crop
        (transformers' PIL backend: PIL resize, integer-floored centre crop)."""
        from PIL import Image

        resample = getattr(Image.Resampling, self.resample)
        kind, a, b = self.resize
        width, height = img.size
        if kind == "exact":
            img = img.resize((b, a), resample)
        elif a:
            short, long = (width, height) if width <= height else (height, width)
            new_long = int(a * long / short)
            img = img.resize((a, new_long) if width <= height else (new_long, a), resample)
        pixels = np.asarray(img, dtype=np.uint8)
        if self.crop:
            h, w = pixels.shape[:2]
            if h < self.crop or w < self.crop:  # the processor pads with zeros around a small image
                padded = np.zeros((max(h, self.crop), max(w, self.crop), 3), dtype=np.uint8)
                top, left = -(-(padded.shape[0] - h) // 2), -(-(padded.shape[1] - w) // 2)
                padded[top:top + h, left:left + w] = pixels
                pixels, h, w = padded, padded.shape[0], padded.shape[1]
            top, left = (h - self.crop) // 2, (w - self.crop) // 2
            pixels = pixels[top:top + self.crop, left:left + self.crop]
        return np.ascontiguousarray(pixels)


def _side(value: Any, key: str) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, dict) and key in value:
        return int(value[key])
    return 0


def read_preprocessing(path: Path, model_type: str) -> Preprocessing:
    """The model's preprocessing from its preprocessor_config.json (its image processor's
    settings; the processor class's defaults where a key is absent)."""
    source = Path(path) / "preprocessor_config.json"
    if not source.is_file():
        raise ValueError(f"{source} is missing: an image backbone's preprocessing (resize, crop, mean/std) comes "
                         "from it; save it with `AutoImageProcessor.from_pretrained(...).save_pretrained(path)`")
    c = json.loads(source.read_text())
    family = image_family_of(model_type).name
    # The processor classes' defaults (ViTImageProcessor, ConvNextImageProcessor, CLIPImageProcessor).
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    defaults = {"vit": ({"height": 224, "width": 224}, 2, ((0.5,) * 3, (0.5,) * 3), False),
                "convnext": ({"shortest_edge": 384}, 3, imagenet, False),
                "resnet": ({"shortest_edge": 384}, 3, imagenet, False),  # microsoft/resnet-*: ConvNextImageProcessor
                "clip": ({"shortest_edge": 224}, 3, ((0.48145466, 0.4578275, 0.40821073),
                                                     (0.26862954, 0.26130258, 0.27577711)), True)}[family]
    size = c.get("size", defaults[0])
    if isinstance(size, int):  # older configs: an int (square for ViT, the shortest edge otherwise)
        size = {"height": size, "width": size} if family == "vit" else {"shortest_edge": size}
    resample = _RESAMPLE.get(int(c.get("resample", defaults[1])))
    if resample is None:
        raise ValueError(f"{source}: resample {c.get('resample')!r} is not a PIL filter number (0-5)")
    do_resize = c.get("do_resize", True)
    crop = 0
    processor = str(c.get("image_processor_type", ""))
    if "height" in size and "width" in size:
        resize: tuple[str, int, int] = ("exact", int(size["height"]), int(size["width"]))
    elif "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        if family in ("convnext", "resnet") and "ConvNext" in (processor or "ConvNext"):
            # ConvNextImageProcessor: below 384, resize the shortest edge to edge / crop_pct,
            # then centre-crop edge x edge; from 384, warp to edge x edge.
            if edge < 384:
                resize = ("shortest_edge", int(edge / float(c.get("crop_pct") or 224 / 256)), 0)
                crop = edge
            else:
                resize = ("exact", edge, edge)
        else:
            resize = ("shortest_edge", edge, 0)
    else:
        raise ValueError(f"{source}: size {size!r} is not supported (height and width, or shortest_edge)")
    if not do_resize:
        resize = ("shortest_edge", 0, 0)
    if c.get("do_center_crop", defaults[3]) and not crop:
        crop_size = c.get("crop_size", {"height": 224, "width": 224})
        h, w = _side(crop_size, "height"), _side(crop_size, "width") or _side(crop_size, "height")
        if h != w:
            raise ValueError(f"{source}: crop_size {crop_size!r} is not square: Graft serves square inputs")
        crop = h
    if not crop:
        kind, h, w = resize
        if kind != "exact" or h != w:
            raise ValueError(f"{source}: the processor does not make a fixed square input (size {size!r}, no centre "
                             "crop): Graft serves square inputs")
    mean = c.get("image_mean", defaults[2][0]) if c.get("do_normalize", True) else (0.0, 0.0, 0.0)
    std = c.get("image_std", defaults[2][1]) if c.get("do_normalize", True) else (1.0, 1.0, 1.0)
    mean = tuple(float(x) for x in (mean if isinstance(mean, (list, tuple)) else [mean] * 3))
    std = tuple(float(x) for x in (std if isinstance(std, (list, tuple)) else [std] * 3))
    rescale = float(c.get("rescale_factor", 1 / 255)) if c.get("do_rescale", True) else 1.0
    return Preprocessing(resize=resize, crop=crop, resample=resample, rescale=rescale,
                         mean=mean, std=std)  # type: ignore[arg-type]


def has_pooler_weights(path: Path) -> bool:
    """Whether the checkpoint holds ViT's pooler (a ViTModel saved with it), read from the
    weights' names only."""
    path = Path(path)
    names: list[str] = []
    shards = sorted(path.glob("model*.safetensors"))
    if shards:
        from safetensors import safe_open

        for shard in shards:
            with safe_open(str(shard), framework="numpy") as f:
                names += list(f.keys())
    elif (path / "pytorch_model.bin").is_file():
        import torch

        names = list(torch.load(str(path / "pytorch_model.bin"), map_location="meta", weights_only=True))
    return any(n.endswith("pooler.dense.weight") for n in names)


def decode(data: bytes, limits: Any, pre: Preprocessing) -> np.ndarray:
    """PNG or JPEG bytes -> the model's uint8 (size, size, 3) RGB input, or an ItemError."""
    from PIL import Image, ImageOps

    from models.image import _rgb, open_image

    kind, a, b = pre.resize
    img = open_image(data, limits, max(a, b, pre.size))
    try:
        img = ImageOps.exif_transpose(img)
        img.load()
        img = _rgb(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ItemError(f"the image cannot be decoded: {e}") from None
    return pre.geometry(img)


# -- the torch models (export and the parity gate; torch imported lazily) ---------------------


def load_torch_image_encoder(spec: Any):  # -> torch.nn.Module
    """uint8 NHWC pixels (already resized and cropped) -> rescaled, normalised -> the family's
    pooled output -> L2-normalised."""
    import torch
    from transformers import AutoModel

    pre = spec.preprocessing

    class HFImageEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            kwargs: dict[str, Any] = {}
            if spec.family == "vit":
                kwargs["add_pooling_layer"] = spec.pooling == "pooler"
            if spec.family in ("vit", "clip"):
                kwargs["attn_implementation"] = "eager"
            self.model = AutoModel.from_pretrained(str(spec.path), local_files_only=True, **kwargs)
            self.register_buffer("mean", torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, pixels):  # type: ignore[no-untyped-def]
            x = pixels.permute(0, 3, 1, 2).to(torch.float32) * pre.rescale
            x = (x - self.mean) / self.std
            if spec.family == "clip":
                pooled = self.model.visual_projection(self.model.vision_model(pixel_values=x).pooler_output)
            elif spec.family == "vit" and spec.pooling == "cls":
                pooled = self.model(pixel_values=x).last_hidden_state[:, 0]
            elif spec.family == "vit" and spec.pooling == "mean":
                pooled = self.model(pixel_values=x).last_hidden_state[:, 1:].mean(1)
            else:
                pooled = self.model(pixel_values=x).pooler_output.flatten(1)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    model = HFImageEncoder().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_torch_clip_text(spec: Any):  # -> torch.nn.Module
    """CLIP's text tower: (input_ids, attention_mask) -> projected, L2-normalised embeddings."""
    import torch
    from transformers import CLIPModel

    class ClipText(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = CLIPModel.from_pretrained(str(spec.path), local_files_only=True, attn_implementation="eager")

        def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
            pooled = self.model.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output
            return torch.nn.functional.normalize(self.model.text_projection(pooled), p=2, dim=1)

    model = ClipText().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def export_image_onnx(spec: Any, out: Path, opset: int) -> None:
    import torch

    model = load_torch_image_encoder(spec)
    sample = torch.zeros((2, spec.image_size, spec.image_size, 3), dtype=torch.uint8)
    with torch.no_grad():
        torch.onnx.export(model, (sample,), str(out), dynamo=False, opset_version=opset,
                          input_names=["pixels"], output_names=["embeddings"],
                          dynamic_axes={"pixels": {0: "batch"}, "embeddings": {0: "batch"}})


def export_text_tower(spec: Any, graph: Path, meta: Path, opset: int) -> None:
    """CLIP's text tower as its own graph, and the model's logit scale (exp of its parameter)
    beside it."""
    import torch

    from models.text import load_tokenizer

    model = load_torch_clip_text(spec)
    ids, mask, _ = load_tokenizer(spec).encode(["a photo of a cat", "a photo of a small red dog"])
    dyn = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(ids), torch.from_numpy(mask)), str(graph), dynamo=False,
                          opset_version=opset, input_names=["input_ids", "attention_mask"],
                          output_names=["embeddings"],
                          dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "embeddings": {0: "batch"}})
        scale = float(model.model.logit_scale.exp())
    meta.write_text(json.dumps({"logit_scale": scale}))


# -- CLIP's text tower at serving time -------------------------------------------------------


class TextTower:
    """CLIP's text graph and tokenizer: label prompts -> unit vectors in the image space."""

    def __init__(self, spec: Any, runner: Any, logit_scale: float) -> None:
        from models.text import load_tokenizer

        self.tokenizer = load_tokenizer(spec)
        self.runner = runner
        self.logit_scale = logit_scale
        self.prompt = spec.label_prompt or DEFAULT_PROMPT

    def texts(self, labels: list[str], descriptions: dict[str, str] | None = None) -> list[str]:
        """A label's description verbatim where given, else the prompt with the label."""
        descriptions = descriptions or {}
        return [descriptions[label] if label in descriptions else self.prompt.replace("{label}", label)
                for label in labels]

    def embed(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), 32):
            ids, mask, _ = self.tokenizer.encode(texts[start:start + 32])
            out.append(self.runner.run(ids, mask))
        return np.concatenate(out) if out else np.empty((0, 0), dtype=np.float32)
