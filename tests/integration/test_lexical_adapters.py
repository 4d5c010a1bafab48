"""Lexical and hybrid adapters over HTTP and gRPC against the real server and its worker:
fine-tuned through POST /v1/finetune (and gRPC FineTune), a lexical adapter beats a head where
word identity decides the label, lexical and hybrid adapters of one tenant and a head adapter
of another share batches without changing each other's answers, versions say what they are,
bad parameters get 400 saying what is allowed."""
from __future__ import annotations

import base64

import grpc
import pytest

from adapters.lexical import MAX_BYTES
from service.proto.graft.v1 import graft_pb2 as pb
from service.proto.graft.v1 import graft_pb2_grpc as pb_grpc
from tests.images import png
from tests.integration import helpers
from tests.integration.jobs import wait_job
from tests.integration.lexical_data import code_split

TRAIN, HELD_OUT = code_split()
ADAPTERS = ("lexical", "hybrid", "head")


def predict(client, tenant: str, adapter: str) -> tuple[float, list[dict]]:
    return helpers.held_out_accuracy(client, tenant, adapter, HELD_OUT)


@pytest.fixture(scope="module")
def trained(client):
    """Tenant A: a lexical and a hybrid adapter; tenant B: a head adapter, on the same examples."""
    a, key_a = helpers.new_tenant(client, "lex")
    b, key_b = helpers.new_tenant(client, "head")
    owners = {"lexical": (a, key_a), "hybrid": (a, key_a), "head": (b, key_b)}
    jobs = {}
    for adapter in ADAPTERS:
        params = {"method": adapter}
        r = client.post("/v1/finetune", json={"tenant": owners[adapter][0], "adapter": adapter, "examples": TRAIN,
                                              "params": params})
        assert r.status_code == 202, r.text
        jobs[adapter] = r.json()["job_id"]
    done = {adapter: wait_job(client, job, timeout=300) for adapter, job in jobs.items()}
    assert all(d["status"] == "succeeded" and d["promoted"] for d in done.values()), done
    return owners, done


def test_a_lexical_fine_tune_beats_a_head_where_word_identity_decides(client, trained):
    owners, _ = trained
    head, _ = predict(client, owners["head"][0], "head")
    lexical, _ = predict(client, owners["lexical"][0], "lexical")
    hybrid, _ = predict(client, owners["hybrid"][0], "hybrid")
    assert lexical >= 0.95 and lexical >= head + 0.15, (lexical, head)
    assert hybrid >= head + 0.1, (hybrid, head)


def test_versions_say_their_method_settings_and_size(client, trained):
    owners, _ = trained
    tenant = owners["lexical"][0]
    for method in ("lexical", "hybrid"):
        (v,) = client.get(f"/v1/tenants/{tenant}/adapters/{method}/versions").json()["versions"]
        assert v["method"] == method and v["head"] == "linear" and v["lora"] is None and v["unfreeze"] is None
        assert v["lexical"]["word_ngram"] == [1, 1] and v["lexical"]["char_ngram"] == [2, 5]
        assert (v["lexical"]["embedding_weight"] is None) == (method == "lexical")
        assert v["lexical"]["word_terms"] > 36 and 1_000 < v["bytes"] <= MAX_BYTES
        assert v["training"]["method"] == method and v["metrics"]["macro_f1"] >= 0.9
    (head,) = client.get(f"/v1/tenants/{owners['head'][0]}/adapters/head/versions").json()["versions"]
    assert head["method"] == "head" and head["lexical"] is None


def test_lexical_hybrid_and_head_tenants_share_batches_without_changing_answers(server, client, trained):
    """Requests of tenant A's lexical and hybrid adapters and tenant B's head adapter, all at
    once, each with its own tenant key, over HTTP and gRPC: every answer equals the one the
    same request got alone."""
    owners, _ = trained
    alone = {adapter: predict(client, owners[adapter][0], adapter)[1] for adapter in ADAPTERS}

    helpers.assert_mixed_answers_equal_alone(server, owners, HELD_OUT, alone)


def test_lexical_over_grpc(server, trained):
    owners, _ = trained
    tenant, key = owners["lexical"]
    stub = pb_grpc.GraftStub(server.channel(key))
    out = stub.Predict(pb.PredictRequest(tenant=tenant, adapter="hybrid", inputs=[t for t, _ in HELD_OUT[:40]],
                                         top_k=3))
    assert sum(p.label == label for p, (_, label) in zip(out.predictions, HELD_OUT)) / 40 >= 0.9
    assert all(len(p.top) == 3 for p in out.predictions)
    (version,) = stub.ListVersions(pb.ListVersionsRequest(tenant=tenant, adapter="lexical")).versions
    assert version.method == "lexical" and 0 < version.bytes <= MAX_BYTES
    job = stub.FineTune(pb.FineTuneRequest(
        tenant=tenant, adapter="lexical-grpc", examples=[pb.Example(text=e["text"], label=e["label"]) for e in TRAIN],
        params=pb.FineTuneParams(method="lexical")))
    assert job.status == "queued"
    with server.client(key) as c:
        assert wait_job(c, job.job_id)["status"] == "succeeded"
    with pytest.raises(grpc.RpcError) as e:
        stub.FineTune(pb.FineTuneRequest(tenant=tenant, backbone="efficientnet-lite0",
                                         examples=[pb.Example(image=png(i), label="ab"[i % 2]) for i in range(4)],
                                         params=pb.FineTuneParams(method="hybrid")))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "image backbone" in e.value.details()


def test_bad_lexical_params_get_400(client, trained):
    owners, _ = trained
    tenant = owners["lexical"][0]
    images = [{"image": base64.b64encode(png(i)).decode(), "label": "ab"[i % 2]} for i in range(4)]
    for method in ("lexical", "hybrid"):
        r = client.post("/v1/finetune", json={"tenant": tenant, "adapter": "pics", "backbone": "efficientnet-lite0",
                                              "examples": images, "params": {"method": method}})
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert f"method {method} reads texts" in error["message"] and "image backbone" in error["message"]
        assert "head" in error["details"]["methods"] and method not in error["details"]["methods"]
    r = client.post("/v1/finetune", json={"tenant": tenant, "examples": TRAIN[:4], "params": {"method": "tfidf"}})
    assert r.status_code == 400 and "lexical" in r.text and "hybrid" in r.text
