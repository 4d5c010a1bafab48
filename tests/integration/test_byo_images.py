"""Bring your own image backbone, over HTTP: a catalogue file (GRAFT_CATALOG) naming tiny
random-weight ViT and ConvNeXt directories (kind image) and a CLIP directory (kind text-image),
made offline (tests/tiny_models.py), served by the real server: each exported and gated (parity
at load; /readyz shows it), embedding, fine-tuned (head) and predicting end to end, deep methods
refused with a clear 400; CLIP's zero-shot image adapter from label names (its head is the text
tower's prompt embeddings times the model's logit scale, its scores are CLIPModel's
logits_per_image softmax for the same images and prompts), then fine-tuned from that head."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tests.images import SHAPES, jpeg, png
from tests.integration import helpers
from tests.integration.jobs import wait_job
from tests.integration.server import Server
from tests.tiny_models import make_tiny_image

LABELS = sorted(SHAPES)
TRAIN = [(png(2000 + 10 * i + k, shape=s, size=(56 + i, 48)), s) for i in range(6) for k, s in enumerate(LABELS)]
QUERIES = [png(7001, shape="disc", size=(40, 64)), jpeg(7002, shape="square", size=(90, 60)), png(7003, size=(20, 24))]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def examples(pairs):
    return [{"image": b64(data), "label": label} for data, label in pairs]


@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("byo-images")
    for family in ("vit", "convnext", "clip"):
        make_tiny_image(family, tmp / "models" / family)
    catalog = tmp / "catalog.yaml"
    catalog.write_text("backbones:\n"
                       "  - {id: tiny-vit, kind: image, path: models/vit}\n"
                       "  - {id: tiny-convnext, kind: image, path: models/convnext}\n"
                       "  - {id: tiny-clip, kind: text-image, path: models/clip}\n")
    db = f"sqlite:///{tmp}/registry.db"
    server = Server(tmp / "home", tmp / "server.log", GRAFT_CATALOG=str(catalog),
                    GRAFT_BACKBONES='["tiny-vit", "tiny-convnext", "tiny-clip"]', GRAFT_DEFAULT_BACKBONE="tiny-vit",
                    GRAFT_DATABASE_URL=db, GRAFT_PRECISION="int8", GRAFT_SPLIT_LAYERS="0",
                    GRAFT_IMAGE_SPLIT_BLOCKS="2", GRAFT_JOB_POLL_MS="100", HF_HUB_OFFLINE="1")
    server.start()
    try:
        yield server, tmp, db
    finally:
        server.stop()


def test_every_image_family_is_gated_and_shown_on_readyz(byo):
    server, _, _ = byo
    with server.client() as c:
        ready = {b["id"]: b for b in c.get("/readyz").json()["backbones"]}
    assert set(ready) == {"tiny-vit", "tiny-convnext", "tiny-clip"}
    for id_, family in (("tiny-vit", "vit"), ("tiny-convnext", "convnext"), ("tiny-clip", "clip")):
        b = ready[id_]
        assert b["kind"] == "image" and b["family"] == family and b["image_size"] == 32
        assert b["parity_gate"]["fp32"]["passed"] and b["parity_gate"]["fp32"]["max_abs_diff"] <= 1e-4
        # int8 asked for (GRAFT_PRECISION): these families have no recipe; fp32 served, and why.
        assert b["precision"] == "fp32" and "no int8 recipe for" in b["int8_gate"]["reason"]
        assert b["deep_adapters"]["methods"] == [] and "EfficientNet only" in b["deep_adapters"]["refused"]
    assert ready["tiny-clip"]["parity_gate"]["text_tower"]["passed"]
    assert ready["tiny-clip"]["zero_shot"]["prompt"] == "a photo of a {label}"
    assert "zero_shot" not in ready["tiny-vit"]


@pytest.mark.parametrize("backbone", ["tiny-vit", "tiny-convnext"])
def test_image_families_embed_fine_tune_and_predict_over_http(byo, backbone):
    server, _, _ = byo
    with server.client() as c:
        r = c.post("/v1/embed", json={"backbone": backbone, "inputs": [{"image": b64(q)} for q in QUERIES]})
        assert r.status_code == 200, r.text
        e = np.array(r.json()["embeddings"])
        assert e.shape[0] == 3 and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
        tenant, _ = helpers.new_tenant(c, backbone[5:9])
        r = c.post("/v1/finetune", json={"tenant": tenant, "adapter": "shapes", "backbone": backbone,
                                         "examples": examples(TRAIN), "params": {"method": "head"}})
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["job_id"])
        assert job["status"] == "succeeded", job
        r = c.post("/v1/predict", json={"tenant": tenant, "adapter": "shapes", "top_k": 3,
                                        "inputs": [{"image": b64(q)} for q in QUERIES]})
        assert r.status_code == 200, r.text
        for p in r.json()["predictions"]:
            assert p["label"] in LABELS and abs(sum(t["score"] for t in p["top"]) - 1) < 1e-4
        # Deep methods: a clear 400 that says why and what to use, not a crash.
        for method, why in (("unfreeze", f"backbone {backbone!r} ({backbone[5:]}) does not support deep adapters: "
                                         "image split graphs (method unfreeze) exist for EfficientNet only"),
                            ("lora", "is an image backbone")):
            r = c.post("/v1/finetune", json={"tenant": tenant, "adapter": "deep", "backbone": backbone,
                                             "examples": examples(TRAIN), "params": {"method": method}})
            assert r.status_code == 400, r.text
            assert why in r.text and "use method head" in r.text, r.text
        # A zero-shot adapter needs a text tower: a clear 400 on an image-only backbone.
        r = c.post("/v1/adapters", json={"tenant": tenant, "adapter": "zs", "backbone": backbone, "labels": LABELS})
        assert r.status_code == 400 and "text tower" in r.text, r.text


def clip_reference(path, prompts: list[str], images: list[bytes]):
    """torch CLIPModel fed by the directory's own tokenizer and image processor."""
    import torch
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(str(path), local_files_only=True).eval()
    tokens = AutoTokenizer.from_pretrained(str(path))(prompts, padding=True, return_tensors="pt")
    pixels = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)(
        images=[Image.open(io.BytesIO(d)).convert("RGB") for d in images], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(**tokens, pixel_values=pixels)
    return out, float(model.logit_scale.exp())


def test_clip_zero_shot_image_adapter_from_label_names_then_fine_tuned(byo):
    from safetensors.numpy import load as load_tensors

    from adapters.registry import Registry

    server, tmp, db = byo
    prompts = [f"a photo of a {label}" for label in LABELS]
    out, scale = clip_reference(tmp / "models" / "clip", prompts, QUERIES)
    with server.client() as c:
        tenant, _ = helpers.new_tenant(c, "clip")
        r = c.post("/v1/adapters", json={"tenant": tenant, "adapter": "shapes", "backbone": "tiny-clip",
                                         "labels": LABELS})
        assert r.status_code == 201, r.text
        (v,) = c.get(f"/v1/tenants/{tenant}/adapters/shapes/versions").json()["versions"]
        assert v["training"]["method"] == "zero-shot" and v["training"]["texts"] == prompts
        assert v["training"]["scale"] == pytest.approx(scale, rel=1e-6) and v["training"]["prompt"] == "a photo of a {label}"
        # The head: the text tower's normalised prompt embeddings times CLIP's logit scale.
        registry = Registry(db, migrate=False)
        try:
            stored, _ = registry.active(tenant, "shapes")
        finally:
            registry.close()
        tensors = load_tensors(stored.weights)
        assert np.abs(tensors["weight"] - out.text_embeds.numpy() * scale).max() < 1e-3
        assert not tensors["bias"].any()
        # Served scores: CLIPModel's logits_per_image softmax for the same images and prompts.
        r = c.post("/v1/predict", json={"tenant": tenant, "adapter": "shapes", "top_k": 3,
                                        "inputs": [{"image": b64(q)} for q in QUERIES]})
        assert r.status_code == 200, r.text
        want = out.logits_per_image.softmax(-1).numpy()
        for row, p in zip(want, r.json()["predictions"]):
            got = {t["label"]: t["score"] for t in p["top"]}
            assert np.abs(np.array([got[label] for label in LABELS]) - row).max() < 1e-4, (got, row)
            assert p["label"] == LABELS[int(row.argmax())]
        # Then fine-tuned like any image adapter, from the zero-shot head (continual).
        r = c.post("/v1/finetune", json={"tenant": tenant, "adapter": "shapes", "backbone": "tiny-clip",
                                         "examples": examples(TRAIN), "params": {"method": "head", "continual": True}})
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["job_id"])
        assert job["status"] == "succeeded", job
        versions = {v["version"]: v for v in c.get(f"/v1/tenants/{tenant}/adapters/shapes/versions").json()["versions"]}
        assert set(versions) == {1, 2}
        tuned = versions[2]
        assert tuned["training"]["continual_from"] == 1 and tuned["training"]["method"] == "fine-tune"
        # The baseline a fine-tune must beat: the label prompts through the text tower.
        assert set(tuned["metrics"]["baselines"]) >= {"majority", "zero_shot", "active"}
        r = c.post("/v1/predict", json={"tenant": tenant, "adapter": "shapes",
                                        "inputs": [{"image": b64(q)} for q in QUERIES]})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] in LABELS
