"""Method unfreeze on the image backbone over HTTP and gRPC, against the real server and its
worker (GRAFT_IMAGE_SPLIT_BLOCKS=5 there): an unfreeze fine-tune of the last block trains,
is promoted and serves; its requests and a head adapter's, at once, keep their answers;
versions say what they carry; parameters that do not fit get 400 saying what is allowed."""
from __future__ import annotations

import concurrent.futures as cf
import json

import grpc
import pytest

from service.proto.graft.v1 import graft_pb2 as pb
from service.proto.graft.v1 import graft_pb2_grpc as pb_grpc
from tests.integration import helpers
from tests.integration.jobs import wait_job
from tests.integration.test_images import HELD_OUT, IMAGE, TRAIN, image_examples

INPUTS = [{"image": e["image"]} for e in image_examples(HELD_OUT)]


def predict(client, tenant: str, adapter: str) -> list[dict]:
    r = client.post("/v1/predict", json={"tenant": tenant, "adapter": adapter, "inputs": INPUTS})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def accuracy(predictions: list[dict]) -> float:
    return sum(p["label"] == label for p, (_, label) in zip(predictions, HELD_OUT)) / len(HELD_OUT)


@pytest.fixture(scope="module")
def trained(client):
    """One tenant with a head adapter and an unfreeze adapter (the last block and the head
    conv) fine-tuned on the same 8 pictures per class."""
    tenant, key = helpers.new_tenant(client, "imgdeep")
    jobs = {}
    for adapter, params in (("head", {"method": "head"}),
                            ("unfreeze", {"method": "unfreeze", "unfreeze_layers": 1, "epochs": 3})):
        r = client.post("/v1/finetune", json={"tenant": tenant, "adapter": adapter, "backbone": IMAGE,
                                              "examples": image_examples(TRAIN), "params": params})
        assert r.status_code == 202, r.text
        jobs[adapter] = r.json()["job_id"]
    done = {adapter: wait_job(client, job, timeout=300) for adapter, job in jobs.items()}
    assert all(d["status"] == "succeeded" for d in done.values()), {a: (d["status"], d["error"])
                                                                    for a, d in done.items()}
    return tenant, key, done


def test_an_image_unfreeze_fine_tune_trains_is_promoted_and_serves(client, trained):
    tenant, _, done = trained
    assert done["unfreeze"]["promoted"] and done["unfreeze"]["version"] == 1
    assert done["unfreeze"]["metrics"]["macro_f1"] >= 0.8, done["unfreeze"]["metrics"]
    predictions = predict(client, tenant, "unfreeze")
    assert accuracy(predictions) >= 0.8, predictions
    events = client.get(f"/v1/jobs/{done['unfreeze']['job_id']}/events").json()["events"]
    hidden = next(e for e in events if e["kind"] == "hidden_states")
    assert hidden["split"] == 11 and hidden["layers"] == 1 and hidden["computed"] == len(TRAIN)


def test_image_unfreeze_versions_say_what_they_carry(client, trained):
    tenant, _, _ = trained
    (version,) = client.get(f"/v1/tenants/{tenant}/adapters/unfreeze/versions").json()["versions"]
    assert version["method"] == "unfreeze" and version["lora"] is None and version["unfreeze"] == {
        "layers": 1, "split": 11, "backbone_layers": 16, "hidden": 1280, "arch": "efficientnet-lite0"}
    assert 4_070_400 < version["bytes"] < 4_100_000  # block 15 and the head conv in fp32, and the head
    assert version["training"]["method"] == "unfreeze" and version["training"]["params"]["layers"] == 1


def test_image_unfreeze_and_head_tenants_share_batches_without_changing_answers(server, client, trained):
    """Requests of the unfreeze adapter, the head adapter and another tenant's head adapter at
    once: every answer equals the one the same request got alone."""
    tenant, key, _ = trained
    adapters = ("unfreeze", "head")
    alone = {adapter: predict(client, tenant, adapter) for adapter in adapters}

    def call(i: int):
        adapter = adapters[i % 2]
        with server.client(key) as c:
            return adapter, predict(c, tenant, adapter)

    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(call, range(12)))
    for adapter, predictions in results:
        for got, want in zip(predictions, alone[adapter]):
            assert got["label"] == want["label"] and abs(got["score"] - want["score"]) < 1e-4


def test_image_unfreeze_over_grpc(server, trained):
    tenant, key, _ = trained
    stub = pb_grpc.GraftStub(server.channel(key))
    out = stub.Predict(pb.PredictRequest(tenant=tenant, adapter="unfreeze", images=[d for d, _ in HELD_OUT]))
    assert sum(p.label == label for p, (_, label) in zip(out.predictions, HELD_OUT)) / len(HELD_OUT) >= 0.8
    (version,) = stub.ListVersions(pb.ListVersionsRequest(tenant=tenant, adapter="unfreeze")).versions
    assert version.method == "unfreeze" and json.loads(version.unfreeze_json)["arch"] == "efficientnet-lite0"
    with pytest.raises(grpc.RpcError) as e:
        stub.FineTune(pb.FineTuneRequest(tenant=tenant, backbone=IMAGE,
                                         examples=[pb.Example(image=d, label=label) for d, label in TRAIN[:6]],
                                         params=pb.FineTuneParams(method="unfreeze", unfreeze_layers=6)))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most its top 5 blocks" in e.value.details()


@pytest.mark.parametrize("params, needle", [
    ({"method": "unfreeze", "unfreeze_layers": 6}, "unfreezes at most its top 5 blocks (GRAFT_IMAGE_SPLIT_BLOCKS)"),
    # The 5 blocks the test server offers, with the head conv (10.7 MB), exceed its GRAFT_MAX_UNFREEZE_BYTES (10 MB).
    ({"method": "unfreeze"}, "over GRAFT_MAX_UNFREEZE_BYTES (9.5 MiB): unfreeze at most 4 blocks"),
    ({"method": "lora"}, "an image backbone: use method head or unfreeze"),
    ({"method": "lora", "lora_rank": 4}, "LoRA on convolutions is not offered"),
])
def test_bad_image_deep_parameters_are_400(client, params, needle):
    tenant, _ = helpers.new_tenant(client, "imgdeep")
    r = client.post("/v1/finetune", json={"tenant": tenant, "backbone": IMAGE, "examples": image_examples(TRAIN[:6]),
                                          "params": params})
    assert r.status_code == 400, r.text
    assert needle in r.json()["error"]["message"]
