"""Images end to end: embed, fine-tune (JSON, zip upload, gRPC), predict, bad images,
and text and image traffic at once."""
from __future__ import annotations

import base64
import io
import zipfile
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from PIL import Image

from service.proto.graft.v1 import graft_pb2 as pb
from service.proto.graft.v1 import graft_pb2_grpc as pb_grpc
from tests.images import SHAPES, encode, jpeg, png
from tests.integration import helpers
from tests.integration.jobs import wait_job

IMAGE = "efficientnet-lite0"
LABELS = sorted(SHAPES)
TRAIN = [(png(1000 + 10 * i + k, shape=s), s) for i in range(8) for k, s in enumerate(LABELS)]
HELD_OUT = [(jpeg(5000 + 10 * i + k, shape=s, size=(120, 90)), s) for i in range(4) for k, s in enumerate(LABELS)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_examples(pairs):
    return [{"image": b64(data), "label": label} for data, label in pairs]


@pytest.fixture(scope="module")
def trained(client):
    """A tenant with a shape classifier fine-tuned on 8 pictures per class."""
    tenant, _ = helpers.new_tenant(client, "img")
    r = client.post("/v1/finetune", json={"tenant": tenant, "adapter": "shapes", "backbone": IMAGE,
                                          "examples": image_examples(TRAIN)})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    return tenant, job


def test_readyz_lists_both_backbones(client):
    kinds = {b["id"]: b["kind"] for b in client.get("/readyz").json()["backbones"]}
    assert kinds == {"minilm-l6": "text", IMAGE: "image"}


def test_embed_images(client):
    same = png(1)
    r = client.post("/v1/embed", json={"backbone": IMAGE, "inputs": [
        {"image": b64(same)}, {"image": b64(jpeg(2))}, {"image": "data:image/png;base64," + b64(same)}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["backbone"] == IMAGE and body["dim"] == 1280 and body["truncated"] == []
    v = np.array(body["embeddings"])
    assert v.shape == (3, 1280) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)
    assert np.allclose(v[0], v[2], atol=1e-6) and v[0] @ v[1] < 0.99


def test_finetuned_image_adapter_predicts(client, trained):
    tenant, job = trained
    metrics = job["metrics"]
    assert set(metrics["baselines"]) == {"majority", "prototype"}
    assert metrics["macro_f1"] >= 0.8, metrics
    r = client.post("/v1/predict", json={"tenant": tenant, "adapter": "shapes", "top_k": 3,
                                         "inputs": [{"image": b64(d)} for d, _ in HELD_OUT]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["backbone"] == IMAGE and len(body["predictions"][0]["top"]) == 3
    hits = sum(p["label"] == label for p, (_, label) in zip(body["predictions"], HELD_OUT))
    assert hits / len(HELD_OUT) >= 0.8, body["predictions"]


def test_text_sent_to_an_image_adapter_is_400(client, trained):
    tenant, _ = trained
    r = client.post("/v1/predict", json={"tenant": tenant, "adapter": "shapes", "inputs": ["a round disc"]})
    assert r.status_code == 400
    assert r.json()["error"]["message"].startswith("inputs[0]: backbone 'efficientnet-lite0' embeds images")


def test_image_sent_to_a_text_backbone_is_400(client):
    r = client.post("/v1/embed", json={"inputs": ["fine", {"image": b64(png(1))}]})
    assert r.status_code == 400
    assert "inputs[1]: backbone 'minilm-l6' embeds text: send a string, not an image" in r.json()["error"]["message"]


def _huge_png(side: int = 5000) -> bytes:
    buf = io.BytesIO()
    Image.new("1", (side, side)).save(buf, "PNG")  # side² pixels in a few kB
    return buf.getvalue()


def _phone_jpeg() -> bytes:
    """A 12-megapixel JPEG (4032 x 3024), as phones take them; small bytes (flat colour)."""
    return encode(Image.new("RGB", (4032, 3024), (90, 140, 200)), "JPEG")


def _noisy_png(side: int) -> bytes:
    rng = np.random.default_rng(0)
    return encode(Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)))


@pytest.mark.parametrize(
    "item, status, needle",
    [
        ({"image": "%%%"}, 400, "inputs[1]: image is not valid base64"),
        ({"image": b64(b"just some bytes")}, 400, "inputs[1]: not a PNG or JPEG image"),
        ({"image": b64(encode(Image.new("RGB", (8, 8)), "GIF"))}, 400, "inputs[1]: not a PNG or JPEG image"),
        ({"image": b64(png(3)[:150])}, 400, "inputs[1]: the image cannot be decoded"),
        ({"image": b64(_huge_png())}, 413, "inputs[1]: the image decodes to 5000 x 5000 pixels; the limit is 4194304"),
        # #14.16: a 16-megapixel PNG passed the old limit (and cost ~200 MB to decode as RGBA).
        ({"image": b64(_huge_png(4000))}, 413, "inputs[1]: the image decodes to 4000 x 4000 pixels"),
        ({"image": b64(_noisy_png(500))}, 413, "bytes; the limit is 524288"),  # GRAFT_MAX_IMAGE_MB=0.5
        ({"image": 5}, 400, "inputs.1.image.image: Input should be a valid string"),
        ({"picture": b64(png(1))}, 400, "inputs.1.image"),
        (5, 400, 'inputs.1: expected a string (text) or an object {"image": "<base64>"}'),
    ],
)
def test_bad_images_say_why(client, item, status, needle):
    r = client.post("/v1/embed", json={"backbone": IMAGE, "inputs": [{"image": b64(png(1))}, item]})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]


def test_zero_shot_needs_a_text_backbone(client):
    tenant, _ = helpers.new_tenant(client, "img")
    r = client.post("/v1/adapters", json={"tenant": tenant, "backbone": IMAGE, "labels": ["cat", "dog"]})
    assert r.status_code == 400 and "POST /v1/finetune" in r.json()["error"]["message"]


def test_a_phone_photo_decodes_at_reduced_scale_and_passes(client):
    """The pixel limit counts what is decoded: a 12-MP JPEG decodes at 1/4 scale."""
    r = client.post("/v1/embed", json={"backbone": IMAGE, "inputs": [{"image": b64(_phone_jpeg())}]})
    assert r.status_code == 200, r.text


def test_finetune_images_are_checked_by_header_and_decoded_by_the_worker(client):
    """#14.16: the API reads each example's header only (format, pixels); an image whose
    header is fine but whose data is broken is found by the worker, which fails the job
    naming the example, with a stable code."""
    tenant, _ = helpers.new_tenant(client, "img")
    broken = png(7, shape="disc")[:200]  # header and the start of the pixel data only
    examples = image_examples(TRAIN[:6]) + [{"image": b64(broken), "label": "disc"}]
    r = client.post("/v1/finetune", json={"tenant": tenant, "backbone": IMAGE, "examples": examples})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "failed" and job["error"]["code"] == "invalid_example", job
    assert job["error"]["message"].startswith("examples[6]: the image cannot be decoded"), job


def test_bad_image_examples_name_the_example(client):
    tenant, _ = helpers.new_tenant(client, "img")
    examples = image_examples(TRAIN[:6]) + [{"image": b64(b"nope"), "label": "disc"}]
    r = client.post("/v1/finetune", json={"tenant": tenant, "backbone": IMAGE, "examples": examples})
    assert r.status_code == 400 and r.json()["error"]["message"] == "examples[6]: not a PNG or JPEG image"
    r = client.post("/v1/finetune", json={"tenant": tenant, "backbone": IMAGE,
                                          "examples": [{"text": "round", "label": "disc"}] * 4})
    assert r.status_code == 400 and "this backbone embeds images" in r.json()["error"]["message"]
    r = client.post("/v1/finetune", json={"tenant": tenant, "examples": [{"text": "a", "label": "x"}] * 4,
                                          "params": {"augment": 2}})
    assert r.status_code == 400 and "augment applies to image backbones" in r.json()["error"]["message"]


def _zip(pairs) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, (data, label) in enumerate(pairs):
            z.writestr(f"{label}/{i}.png", data)
    return buf.getvalue()


def test_zip_upload_with_augmentation(client):
    tenant, _ = helpers.new_tenant(client, "img")
    r = client.post("/v1/finetune", data={"tenant": tenant, "adapter": "zipped", "backbone": IMAGE,
                                          "params": '{"method": "head", "augment": 2, "epochs": 30}'},
                    files={"file": ("train.zip", _zip(TRAIN), "application/zip")})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["status"] == "succeeded", job
    events = client.get(f"/v1/jobs/{job['job_id']}/events").json()["events"]
    (aug,) = [e for e in events if e["kind"] == "augmentation"]
    split = next(e for e in events if e["kind"] == "split")
    assert aug["copies"] == 2 and aug["train"] == 3 * split["train"]
    versions = client.get(f"/v1/tenants/{tenant}/adapters/zipped/versions").json()["versions"]
    params = versions[0]["training"]["params"]
    assert params["augment"] == 2 and params["standardize"] is True and versions[0]["labels"] == LABELS


def test_broken_member_of_a_zip_is_named(client):
    tenant, _ = helpers.new_tenant(client, "img")
    data = _zip([*TRAIN[:6], (b"\x89PNG broken", "disc")])
    r = client.post("/v1/finetune", data={"tenant": tenant, "backbone": IMAGE},
                    files={"file": ("train.zip", data, "application/zip")})
    assert r.status_code == 400 and r.json()["error"]["message"].startswith("disc/6.png: ")


def test_grpc_images(server, client, trained):
    tenant, _ = trained
    with server.channel() as channel:
        stub = pb_grpc.GraftStub(channel)
        out = stub.Embed(pb.EmbedRequest(backbone=IMAGE, images=[png(1), jpeg(2)]))
        http = client.post("/v1/embed", json={"backbone": IMAGE, "inputs": [{"image": b64(png(1))}]}).json()
        assert out.dim == 1280 and np.allclose(out.embeddings[0].values, http["embeddings"][0], atol=1e-5)
        pred = stub.Predict(pb.PredictRequest(tenant=tenant, adapter="shapes", images=[d for d, _ in HELD_OUT]))
        hits = sum(p.label == label for p, (_, label) in zip(pred.predictions, HELD_OUT))
        assert hits / len(HELD_OUT) >= 0.8
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(pb.EmbedRequest(backbone=IMAGE, images=[b"not an image"]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a PNG or JPEG" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            stub.Embed(pb.EmbedRequest(backbone=IMAGE, images=[png(1)], inputs=["text"]))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        job = stub.FineTune(pb.FineTuneRequest(
            tenant=tenant, adapter="grpc-shapes", backbone=IMAGE,
            examples=[pb.Example(image=d, label=label) for d, label in TRAIN],
            params=pb.FineTuneParams(epochs=30)))
        assert job.status == "queued"
    assert wait_job(client, job.job_id)["status"] == "succeeded"


def test_text_and_image_traffic_at_once(client, server):
    """Each backbone has its own micro-batcher: both kinds complete side by side."""
    texts = [f"review number {i}: quite good" for i in range(8)]
    images = [{"image": b64(png(i))} for i in range(8)]

    def text_call(_):
        return client.post("/v1/embed", json={"inputs": texts}).status_code

    def image_call(_):
        return client.post("/v1/embed", json={"backbone": IMAGE, "inputs": images}).status_code

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(text_call if i % 2 else image_call, i) for i in range(32)]
        codes = [f.result() for f in futures]
    assert codes == [200] * 32
    metrics = client.get("/metrics").text
    for backbone in ("minilm-l6", IMAGE):
        assert f'graft_backbone_batch_size_count{{backbone="{backbone}"}}' in metrics
