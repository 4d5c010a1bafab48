"""Bring your own backbone, over HTTP: a catalogue file (GRAFT_CATALOG) naming tiny random-weight
BERT, DistilBERT, RoBERTa and ModernBERT encoders made offline (tests/tiny_models.py), served
by the real server: each exported, gated (parity at load; /readyz shows it), embedding and
fine-tuned (head) end to end; deep adapters where the family has split graphs (RoBERTa: LoRA
end to end) and a clear 400 where it has none; two directories of the same base name under
their own ids; and a model whose weights changed refusing its old adapters."""
from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest

from service.proto.graft.v1 import graft_pb2 as pb
from service.proto.graft.v1 import graft_pb2_grpc as pb_grpc
from tests.integration import helpers
from tests.integration.jobs import wait_job
from tests.integration.server import Server
from tests.tiny_models import make_tiny

FAMILIES = ("bert", "distilbert", "roberta", "modernbert")
WORDS = {"food": ["soup", "pizza", "coffee", "cake", "meal", "salad"],
         "money": ["refund", "order", "account", "market", "bank", "money"]}
TRAIN = [{"text": f"the {w} {tail}", "label": label} for label, words in WORDS.items() for w in words
         for tail in ("was good", "again", "please", "today")]


@pytest.fixture(scope="module")
def byo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("byo")
    models = tmp / "models"
    for family in FAMILIES:
        make_tiny(family, models / family)
    # Two directories of the same base name, different weights: two ids, two fingerprints.
    make_tiny("bert", tmp / "a" / "encoder", seed=1)
    make_tiny("bert", tmp / "b" / "encoder", seed=2)
    # E5-style prompts on one copy of a model, none on the other: what input_type chooses.
    make_tiny("bert", tmp / "p" / "encoder", seed=4)
    shutil.copytree(tmp / "p" / "encoder", tmp / "q" / "encoder")
    catalog = tmp / "catalog.yaml"
    lines = ["backbones:"]
    for family in FAMILIES:
        lines += [f"  - id: tiny-{family}", "    kind: text", f"    path: models/{family}"]
    lines += ["    pooling: cls",  # modernbert: a pooling the catalogue sets
              "  - {id: enc-a, kind: text, path: a/encoder}", "  - {id: enc-b, kind: text, path: b/encoder}",
              '  - {id: e5-like, kind: text, path: p/encoder, prompts: {query: "query: ", passage: "passage: "}}',
              "  - {id: e5-plain, kind: text, path: q/encoder}"]
    catalog.write_text("\n".join(lines) + "\n")
    ids = [f"tiny-{f}" for f in FAMILIES] + ["enc-a", "enc-b", "e5-like", "e5-plain"]
    server = Server(tmp / "home", tmp / "server.log", GRAFT_CATALOG=str(catalog), GRAFT_BACKBONES=str(ids).replace("'", '"'),
                    GRAFT_DEFAULT_BACKBONE="tiny-bert", GRAFT_DATABASE_URL=f"sqlite:///{tmp}/registry.db",
                    GRAFT_PRECISION="fp32", GRAFT_SPLIT_LAYERS="1", GRAFT_JOB_POLL_MS="100",
                    GRAFT_IMAGE_SPLIT_BLOCKS="0", HF_HUB_OFFLINE="1")
    server.start()
    try:
        yield server, tmp
    finally:
        server.stop()


def test_every_family_is_gated_and_shown_on_readyz(byo):
    server, _ = byo
    with server.client() as c:
        ready = {b["id"]: b for b in c.get("/readyz").json()["backbones"]}
    assert set(ready) == {"tiny-bert", "tiny-distilbert", "tiny-roberta", "tiny-modernbert", "enc-a", "enc-b",
                          "e5-like", "e5-plain"}
    for family in FAMILIES:
        b = ready[f"tiny-{family}"]
        assert b["family"] == family and b["dim"] == 32 and b["precision"] == "fp32"
        gate = b["parity_gate"]
        assert gate["fp32"]["passed"] and gate["fp32"]["max_abs_diff"] <= gate["fp32"]["bar"] == 1e-4
        if family in ("bert", "roberta"):  # split graphs: gated too, deep adapters offered
            assert gate["split"]["passed"] and gate["upper_weights"]["passed"]
            assert b["deep_adapters"]["methods"] == ["lora", "unfreeze"]
        else:
            assert set(gate) == {"fp32"} and b["deep_adapters"]["methods"] == []
            assert "does not support deep adapters" in b["deep_adapters"]["refused"]
    assert ready["tiny-modernbert"]["pooling"] == "cls" and ready["tiny-roberta"]["pooling"] == "mean"
    # Same base name, own ids, own weights: own fingerprints.
    assert ready["enc-a"]["fingerprint"] != ready["enc-b"]["fingerprint"]


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_embeds_and_fine_tunes_over_http(byo, family):
    server, _ = byo
    backbone = f"tiny-{family}"
    with server.client() as c:
        r = c.post("/v1/embed", json={"inputs": ["the soup was good", "", "refund my order " * 40],
                                      "backbone": backbone})
        assert r.status_code == 200, r.text
        body = r.json()
        e = np.array(body["embeddings"])
        assert body["backbone"] == backbone and e.shape == (3, 32) and body["truncated"] == [2]
        assert np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
        tenant, _ = helpers.new_tenant(c, family[:4])
        r = c.post("/v1/finetune", json={"tenant": tenant, "adapter": "topics", "backbone": backbone,
                                         "examples": TRAIN, "params": {"method": "head"}})
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["job_id"])
        assert job["status"] == "succeeded", job
        r = c.post("/v1/predict", json={"tenant": tenant, "adapter": "topics", "inputs": ["the cake again"]})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] in WORDS
        if family in ("distilbert", "modernbert"):  # no split graphs: a clear 400, no crash
            r = c.post("/v1/finetune", json={"tenant": tenant, "adapter": "deep", "backbone": backbone,
                                             "examples": TRAIN, "params": {"method": "lora"}})
            assert r.status_code == 400, r.text
            assert f"backbone {backbone!r} ({family}) does not support deep adapters" in r.text


def test_a_roberta_lora_fine_tune_serves_through_the_split_graphs(byo):
    server, _ = byo
    with server.client() as c:
        tenant, _ = helpers.new_tenant(c, "lora")
        r = c.post("/v1/finetune", json={"tenant": tenant, "adapter": "deep", "backbone": "tiny-roberta",
                                         "examples": TRAIN, "params": {"method": "lora", "epochs": 2}})
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["job_id"])
        assert job["status"] == "succeeded", job
        (v,) = c.get(f"/v1/tenants/{tenant}/adapters/deep/versions").json()["versions"]
        assert v["method"] == "lora" and v["lora"]["split"] == 1
        r = c.post("/v1/predict", json={"tenant": tenant, "adapter": "deep", "inputs": ["the salad please", "bank"]})
        assert r.status_code == 200, r.text


def test_passages_take_the_passage_prompt_when_asked(byo):
    """A catalogue entry with E5-style prompts: texts are embedded as queries ("query: " before
    each) unless input_type says passage ("passage: "), over HTTP, OpenAI's route and gRPC;
    the same model without prompts, sent the prefixed texts, gives the same vectors."""
    server, _ = byo
    texts = ["the soup was good", "refund my order"]
    with server.client() as c:
        def embed(backbone: str, items: list[str], **extra: str) -> np.ndarray:
            r = c.post("/v1/embed", json={"inputs": items, "backbone": backbone, **extra})
            assert r.status_code == 200, r.text
            return np.array(r.json()["embeddings"])

        query, passage = embed("e5-like", texts), embed("e5-like", texts, input_type="passage")
        np.testing.assert_allclose(query, embed("e5-plain", [f"query: {t}" for t in texts]), atol=1e-5)
        np.testing.assert_allclose(query, embed("e5-like", texts, input_type="query"), atol=1e-6)
        np.testing.assert_allclose(passage, embed("e5-plain", [f"passage: {t}" for t in texts]), atol=1e-5)
        assert np.abs(query - passage).max() > 1e-3
        np.testing.assert_allclose(embed("e5-plain", texts, input_type="passage"), embed("e5-plain", texts),
                                   atol=1e-6)  # no prompts in the catalogue: the same either way
        r = c.post("/v1/embeddings", json={"model": "e5-like", "input": texts, "input_type": "passage"})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose([d["embedding"] for d in r.json()["data"]], passage, atol=1e-5)
        for path, body in (("/v1/embed", {"inputs": texts, "backbone": "e5-like", "input_type": "document"}),
                           ("/v1/embeddings", {"model": "e5-like", "input": texts, "input_type": "document"})):
            r = c.post(path, json=body)
            assert r.status_code == 400 and "input_type" in r.text, r.text
    with server.channel() as channel:
        stub = pb_grpc.GraftStub(channel)
        out = stub.Embed(pb.EmbedRequest(inputs=texts, backbone="e5-like", input_type="passage"), timeout=30)
        np.testing.assert_allclose([v.values for v in out.embeddings], passage, atol=1e-5)
        with pytest.raises(grpc.RpcError) as e:
            stub.Embed(pb.EmbedRequest(inputs=texts, backbone="e5-like", input_type="document"), timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "input_type" in e.value.details()


def test_a_changed_model_refuses_its_old_adapters(byo):
    """Weights edited in place, server restarted: the adapter bound to the old fingerprint is
    refused with a message saying so, never served on the new weights."""
    server, tmp = byo
    with server.client() as c:
        tenant, _ = helpers.new_tenant(c, "chg")
        r = c.post("/v1/finetune", json={"tenant": tenant, "adapter": "old", "backbone": "enc-a",
                                         "examples": TRAIN, "params": {"method": "head"}})
        assert wait_job(c, r.json()["job_id"])["status"] == "succeeded"
        before = c.get("/readyz").json()
    old = {b["id"]: b["fingerprint"] for b in before["backbones"]}
    server.stop()
    make_tiny("bert", tmp / "a" / "encoder", seed=3)  # new weights, same directory and id
    server.start()
    with server.client() as c:
        now = {b["id"]: b["fingerprint"] for b in c.get("/readyz").json()["backbones"]}
        assert now["enc-a"] != old["enc-a"] and now["enc-b"] == old["enc-b"]
        r = c.post("/v1/predict", json={"tenant": tenant, "adapter": "old", "inputs": ["the soup again"]})
    assert r.status_code >= 400, r.text
    assert "fingerprint" in r.text and "retrain" in r.text, r.text
