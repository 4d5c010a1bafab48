"""gRPC with a real client over loopback: same answers as HTTP, health, reflection, every
error code from a real bad call, deadlines."""
from __future__ import annotations

import asyncio
import re
import time
import uuid

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from sqlalchemy import create_engine, update

from adapters.registry import VersionRow, normalise_url
from service.proto.graft.v1 import graft_pb2 as pb
from service.proto.graft.v1 import graft_pb2_grpc as pb_grpc
from tests.integration.data import split
from tests.integration.server import Server

TRAIN, HELD_OUT = split()


@pytest.fixture(scope="module")
def channel(server):
    with server.channel() as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.GraftStub(channel)


@pytest.fixture(scope="module")
def http(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def tenant(http):
    name = f"g-{uuid.uuid4().hex[:8]}"
    http.post("/v1/tenants", json={"tenant": name})
    http.post("/v1/adapters", json={"tenant": name, "adapter": "support", "labels": ["refund", "shipping", "login"]})
    return name


def test_health_and_reflection(channel):
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "graft.v1.Graft"):
        statuses = []
        for _ in range(20):  # the backbone is ready (the fixture saw /readyz); health follows at once
            statuses.append(health.Check(health_pb2.HealthCheckRequest(service=service)).status)
            if statuses[-1] == health_pb2.HealthCheckResponse.SERVING:
                break
            time.sleep(0.05)
        assert statuses[-1] == health_pb2.HealthCheckResponse.SERVING, statuses
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "graft.v1.Graft" in services and "grpc.health.v1.Health" in services


def test_same_embeddings_and_predictions_as_http(stub, http, tenant):
    texts = [t for t, _ in HELD_OUT]
    g = stub.Embed(pb.EmbedRequest(inputs=texts))
    h = http.post("/v1/embed", json={"inputs": texts}).json()
    assert (g.backbone, g.dim) == (h["backbone"], h["dim"])
    assert np.abs(np.array([v.values for v in g.embeddings]) - np.array(h["embeddings"])).max() < 1e-6

    g = stub.Predict(pb.PredictRequest(tenant=tenant, adapter="support", inputs=texts, top_k=2))
    h = http.post("/v1/predict", json={"tenant": tenant, "adapter": "support", "inputs": texts, "top_k": 2}).json()
    assert g.version == h["version"] and g.backbone == h["backbone"]
    for gp, hp in zip(g.predictions, h["predictions"]):
        assert gp.label == hp["label"] and abs(gp.score - hp["score"]) < 1e-5
        assert [t.label for t in gp.top] == [t["label"] for t in hp["top"]]


def test_adapters_and_jobs_over_grpc(stub, tenant):
    listing = stub.ListAdapters(pb.ListAdaptersRequest(tenant=tenant))
    assert [(a.adapter, a.active_version) for a in listing.adapters] == [("support", 1)]
    job = stub.FineTune(pb.FineTuneRequest(
        tenant=tenant, adapter="tickets", examples=[pb.Example(text=e["text"], label=e["label"]) for e in TRAIN],
        params=pb.FineTuneParams(epochs=30),
    ))
    assert job.status == "queued" and job.job_id
    for _ in range(600):
        job = stub.GetJob(pb.GetJobRequest(job_id=job.job_id))
        if job.status in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert job.status == "succeeded" and job.version == 1 and '"macro_f1"' in job.metrics_json
    assert stub.Promote(pb.PromoteRequest(tenant=tenant, adapter="tickets", version=1)).active_version == 1
    cancelled = stub.FineTune(pb.FineTuneRequest(
        tenant=tenant, adapter="other", examples=[pb.Example(text=e["text"], label=e["label"]) for e in TRAIN],
        params=pb.FineTuneParams(epochs=1000, patience=1000, batch_size=1)))
    assert stub.CancelJob(pb.CancelJobRequest(job_id=cancelled.job_id)).status in ("cancelled", "running")


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as e:
        call()
    assert e.value.details()
    return e.value.code()


def test_error_codes(stub, tenant, server):
    C = grpc.StatusCode
    assert code_of(lambda: stub.Embed(pb.EmbedRequest(inputs=[]))) == C.INVALID_ARGUMENT
    assert code_of(lambda: stub.Predict(pb.PredictRequest(tenant="Bad Name", inputs=["x"]))) == C.INVALID_ARGUMENT
    assert code_of(lambda: stub.FineTune(pb.FineTuneRequest(tenant=tenant, params=pb.FineTuneParams(epochs=-1)))) == C.INVALID_ARGUMENT
    assert code_of(lambda: stub.Predict(pb.PredictRequest(tenant="nobody", inputs=["x"]))) == C.NOT_FOUND
    assert code_of(lambda: stub.GetJob(pb.GetJobRequest(job_id="nope"))) == C.NOT_FOUND
    assert code_of(lambda: stub.Embed(pb.EmbedRequest(inputs=["x"] * 65))) == C.RESOURCE_EXHAUSTED
    assert code_of(lambda: stub.Promote(pb.PromoteRequest(tenant=tenant, adapter="support", version=42))) == C.NOT_FOUND

    # An active version whose bytes were tampered with, and nothing earlier to fall back on.
    server.client().post("/v1/adapters", json={"tenant": tenant, "adapter": "broken", "labels": ["a", "b"]})
    engine = create_engine(normalise_url(server.database_url))
    with engine.begin() as c:
        c.execute(update(VersionRow).where(VersionRow.tenant_id == tenant, VersionRow.adapter == "broken")
                  .values(weights=b"\0" * 32))
    engine.dispose()
    assert code_of(lambda: stub.Predict(pb.PredictRequest(tenant=tenant, adapter="broken", inputs=["x"]))) == C.FAILED_PRECONDITION


def test_grpc_metrics(http, stub):
    stub.Embed(pb.EmbedRequest(inputs=["metrics"]))
    text = http.get("/metrics").text
    assert re.search(r'graft_grpc_requests_total\{code="OK",method="Embed"\} [1-9]', text)
    assert "graft_grpc_request_duration_seconds_bucket" in text


def test_unavailable_while_backbones_cannot_load(graft_home, tmp_path):
    srv = Server(graft_home, tmp_path / "s.log", GRAFT_BACKBONES='["/nonexistent/model"]',
                 GRAFT_DATABASE_URL=f"sqlite:///{tmp_path}/r.db").start(ready=False)
    try:
        with srv.channel() as ch:
            stub = pb_grpc.GraftStub(ch)
            assert code_of(lambda: stub.Embed(pb.EmbedRequest(inputs=["x"]))) == grpc.StatusCode.UNAVAILABLE
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
            assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        srv.stop()


def test_deadline_shorter_than_batch_wait(graft_home, tmp_path):
    """With a 400 ms batch wait, a 100 ms deadline ends in DEADLINE_EXCEEDED; its items leave
    the queue, and a patient call beside it is served normally."""
    srv = Server(graft_home, tmp_path / "s.log", GRAFT_BATCH_MAX_WAIT_MS="400",
                 GRAFT_DATABASE_URL=f"sqlite:///{tmp_path}/r.db").start()
    try:
        async def main():
            async with srv.aio_channel() as ch:
                stub = pb_grpc.GraftStub(ch)
                hasty = stub.Embed(pb.EmbedRequest(inputs=["hasty one", "hasty two", "hasty three"]), timeout=0.1)
                patient = stub.Embed(pb.EmbedRequest(inputs=["patient"]))
                return await asyncio.gather(hasty, patient, return_exceptions=True)

        def items_embedded() -> float:
            text = httpx.get(f"{srv.url}/metrics").text
            return sum(float(v) for v in re.findall(r'^graft_backbone_batch_size_sum\{backbone="minilm-l6"\} (\S+)', text, re.M))

        before = items_embedded()
        hasty, patient = asyncio.run(main())
        assert isinstance(hasty, grpc.aio.AioRpcError) and hasty.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert isinstance(patient, pb.EmbedResponse) and len(patient.embeddings) == 1
        assert items_embedded() - before == 1  # the expired call's three items never ran
    finally:
        srv.stop()
