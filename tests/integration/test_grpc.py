"""gRPC with a real client over loopback: same answers as HTTP, health, reflection, every
error code from a real bad call, deadlines; the tenant, key, adapter and job RPCs with HTTP's
authorization (a tenant's key sees only its own tenant, and nothing of the admin's)."""
from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from functools import partial

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
from tests.integration.helpers import add_zero_shot_version
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


def new_tenant(stub: pb_grpc.GraftStub) -> tuple[str, str]:
    """A fresh tenant created over gRPC (admin stub) and its first key."""
    name = f"g-{uuid.uuid4().hex[:8]}"
    created = stub.CreateTenant(pb.CreateTenantRequest(tenant=name))
    assert created.tenant == name and created.api_key
    return name, created.api_key


def test_tenants_and_keys_over_grpc(stub, http, server):
    C = grpc.StatusCode
    tenant, _ = new_tenant(stub)
    (first,) = stub.ListKeys(pb.ListKeysRequest(tenant=tenant)).keys
    assert not first.revoked and first.created_at
    issued = stub.IssueKey(pb.IssueKeyRequest(tenant=tenant))
    assert (issued.tenant, bool(issued.api_key)) == (tenant, True) and issued.key_id != first.key_id
    with server.channel(issued.api_key) as ch:  # the new key works at once
        assert list(pb_grpc.GraftStub(ch).ListAdapters(pb.ListAdaptersRequest(tenant=tenant)).adapters) == []
    after = stub.RevokeKey(pb.RevokeKeyRequest(tenant=tenant, key_id=first.key_id))
    assert {(k.key_id, k.revoked) for k in after.keys} == {(first.key_id, True), (issued.key_id, False)}
    h = http.get(f"/v1/tenants/{tenant}/keys").json()
    assert sorted((k["key_id"], k["created_at"], k["revoked"]) for k in h["keys"]) == sorted(
        (k.key_id, k.created_at, k.revoked) for k in after.keys)

    assert code_of(lambda: stub.CreateTenant(pb.CreateTenantRequest(tenant=tenant))) == C.FAILED_PRECONDITION
    assert code_of(lambda: stub.CreateTenant(pb.CreateTenantRequest(tenant="-bad"))) == C.INVALID_ARGUMENT
    assert code_of(lambda: stub.RevokeKey(pb.RevokeKeyRequest(tenant=tenant, key_id="XYZ"))) == C.INVALID_ARGUMENT
    assert code_of(lambda: stub.IssueKey(pb.IssueKeyRequest(tenant="Bad Name"))) == C.INVALID_ARGUMENT
    with server.channel(issued.api_key) as ch:  # a tenant's key: the admin's RPCs need the admin key, as over HTTP
        mine = pb_grpc.GraftStub(ch)
        assert code_of(lambda: mine.CreateTenant(pb.CreateTenantRequest(tenant="g-someone"))) == C.PERMISSION_DENIED
        assert code_of(lambda: mine.IssueKey(pb.IssueKeyRequest(tenant=tenant))) == C.PERMISSION_DENIED
        assert code_of(lambda: mine.ListKeys(pb.ListKeysRequest(tenant=tenant))) == C.PERMISSION_DENIED
        revoke = pb.RevokeKeyRequest(tenant=tenant, key_id=issued.key_id)
        assert code_of(lambda: mine.RevokeKey(revoke)) == C.PERMISSION_DENIED


def test_adapter_lifecycle_over_grpc(stub, http, server):
    C = grpc.StatusCode
    tenant, key = new_tenant(stub)
    created = stub.CreateAdapter(pb.CreateAdapterRequest(
        tenant=tenant, adapter="a", labels=["refund", "shipping"],
        descriptions={"refund": "I want my money back", "shipping": "where is my parcel"}))
    assert (created.version, created.backbone, list(created.labels)) == (1, "minilm-l6", ["refund", "shipping"])
    served = stub.Predict(pb.PredictRequest(tenant=tenant, adapter="a", inputs=["money back please"]))
    assert served.predictions[0].label == "refund"
    assert stub.CreateAdapter(pb.CreateAdapterRequest(tenant=tenant, labels=["yes", "no"])).adapter == "default"

    v2 = add_zero_shot_version(http, server.database_url, tenant, "a", ["left", "right"], ["left", "right"])
    listing = stub.ListVersions(pb.ListVersionsRequest(tenant=tenant, adapter="a"))
    h = http.get(f"/v1/tenants/{tenant}/adapters/a/versions").json()
    assert [(v.version, v.active, v.created_at, v.backbone, v.head, list(v.labels), v.parent_version or None)
            for v in listing.versions] == [
        (v["version"], v["active"], v["created_at"], v["backbone"], v["head"], v["labels"], v["parent_version"])
        for v in h["versions"]]
    assert [json.loads(v.metrics_json) for v in listing.versions] == [v["metrics"] for v in h["versions"]]
    assert [json.loads(v.training_json) for v in listing.versions] == [v["training"] for v in h["versions"]]
    assert json.loads(listing.versions[0].training_json)["method"] == "zero-shot"

    refused = partial(stub.Promote, pb.PromoteRequest(tenant=tenant, adapter="a", version=v2))
    assert code_of(refused) == C.FAILED_PRECONDITION  # v2 drops refund and shipping: it needs saying so
    promoted = stub.Promote(pb.PromoteRequest(tenant=tenant, adapter="a", version=v2, allow_dropped_labels=True))
    assert promoted.active_version == v2
    assert stub.Predict(pb.PredictRequest(tenant=tenant, adapter="a", inputs=["turn left"])).version == v2
    rolled = stub.Rollback(pb.RollbackRequest(tenant=tenant, adapter="a"))
    assert (rolled.tenant, rolled.adapter, rolled.active_version) == (tenant, "a", 1)
    deleted = stub.DeleteAdapter(pb.DeleteAdapterRequest(tenant=tenant, adapter="a"))
    assert (deleted.tenant, deleted.adapter, deleted.deleted) == (tenant, "a", True)
    assert code_of(lambda: stub.Predict(pb.PredictRequest(tenant=tenant, adapter="a", inputs=["x"]))) == C.NOT_FOUND

    for method, request, code in [  # HTTP's ERROR_CASES (test_http_adapters.py), over gRPC
        (stub.CreateAdapter, pb.CreateAdapterRequest(tenant=tenant, adapter="x", labels=["a", "a"]), C.INVALID_ARGUMENT),
        (stub.CreateAdapter, pb.CreateAdapterRequest(tenant=tenant, adapter="Bad", labels=["a", "b"]), C.INVALID_ARGUMENT),
        (stub.CreateAdapter, pb.CreateAdapterRequest(tenant=tenant, labels=["a", "b"]), C.FAILED_PRECONDITION),
        (stub.CreateAdapter, pb.CreateAdapterRequest(tenant="ghost", labels=["a", "b"]), C.NOT_FOUND),
        (stub.Promote, pb.PromoteRequest(tenant=tenant, adapter="Not/A/Name", version=1), C.INVALID_ARGUMENT),
        (stub.Promote, pb.PromoteRequest(tenant=tenant, adapter="default", version=0), C.INVALID_ARGUMENT),
        (stub.ListVersions, pb.ListVersionsRequest(tenant=tenant, adapter="missing"), C.NOT_FOUND),
        (stub.ListVersions, pb.ListVersionsRequest(tenant=tenant), C.INVALID_ARGUMENT),
        (stub.Rollback, pb.RollbackRequest(tenant=tenant, adapter="default"), C.FAILED_PRECONDITION),
        (stub.DeleteAdapter, pb.DeleteAdapterRequest(tenant=tenant, adapter="missing"), C.NOT_FOUND),
        (stub.DeleteAdapter, pb.DeleteAdapterRequest(tenant="BAD", adapter="x"), C.INVALID_ARGUMENT),
    ]:
        assert code_of(partial(method, request)) == code, request

    _, other_key = new_tenant(stub)
    with server.channel(other_key) as ch:  # another tenant's key: this tenant's adapters do not exist
        other = pb_grpc.GraftStub(ch)
        for call in (
            lambda: other.CreateAdapter(pb.CreateAdapterRequest(tenant=tenant, adapter="z", labels=["a", "b"])),
            lambda: other.ListVersions(pb.ListVersionsRequest(tenant=tenant, adapter="default")),
            lambda: other.Promote(pb.PromoteRequest(tenant=tenant, adapter="default", version=1)),
            lambda: other.Rollback(pb.RollbackRequest(tenant=tenant, adapter="default")),
            lambda: other.DeleteAdapter(pb.DeleteAdapterRequest(tenant=tenant, adapter="default")),
        ):
            assert code_of(call) == C.NOT_FOUND
    with server.channel(key) as ch:  # its own key: all of it
        own = pb_grpc.GraftStub(ch).ListVersions(pb.ListVersionsRequest(tenant=tenant, adapter="default"))
        assert [v.version for v in own.versions] == [1]


def test_job_events_and_listing_over_grpc(stub, http, server):
    C = grpc.StatusCode
    tenant, key = new_tenant(stub)
    job = stub.FineTune(pb.FineTuneRequest(
        tenant=tenant, adapter="short", examples=[pb.Example(text=e["text"], label=e["label"]) for e in TRAIN],
        params=pb.FineTuneParams(epochs=1)))  # cheap if a worker takes it before the cancel
    stub.CancelJob(pb.CancelJobRequest(job_id=job.job_id))

    listing = stub.ListJobs(pb.ListJobsRequest(tenant=tenant))
    assert listing.tenant == tenant and [j.job_id for j in listing.jobs] == [job.job_id]
    h = http.get(f"/v1/tenants/{tenant}/jobs").json()["jobs"][0]
    (g,) = listing.jobs
    assert (g.adapter, g.backbone, g.created_at) == (h["adapter"], h["backbone"], h["created_at"]) and g.created_at

    events = stub.GetJobEvents(pb.GetJobEventsRequest(job_id=job.job_id))
    h = http.get(f"/v1/jobs/{job.job_id}/events").json()
    assert events.job_id == job.job_id and [e.n for e in events.events][:1] == [1]
    n = len(events.events)  # HTTP asked after gRPC: it may have seen an event more
    as_http = [{"n": e.n, "at": e.at, "kind": e.kind, **json.loads(e.data_json)} for e in events.events]
    assert as_http == h["events"][:n]

    assert code_of(lambda: stub.GetJobEvents(pb.GetJobEventsRequest(job_id="nope"))) == C.NOT_FOUND
    assert code_of(lambda: stub.ListJobs(pb.ListJobsRequest(tenant="Bad"))) == C.INVALID_ARGUMENT
    with server.channel(key) as ch:
        own = pb_grpc.GraftStub(ch).ListJobs(pb.ListJobsRequest(tenant=tenant))
        assert [j.job_id for j in own.jobs] == [job.job_id]
    _, other_key = new_tenant(stub)
    with server.channel(other_key) as ch:
        other = pb_grpc.GraftStub(ch)
        assert code_of(lambda: other.ListJobs(pb.ListJobsRequest(tenant=tenant))) == C.NOT_FOUND
        assert code_of(lambda: other.GetJobEvents(pb.GetJobEventsRequest(job_id=job.job_id))) == C.NOT_FOUND


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


def test_an_expiring_key_over_grpc(stub, server):
    import time

    C = grpc.StatusCode
    tenant, _ = new_tenant(stub)
    issued = stub.IssueKey(pb.IssueKeyRequest(tenant=tenant, expires_in_s=1.5))
    assert issued.expires_at
    assert {k.key_id: k.expires_at for k in stub.ListKeys(pb.ListKeysRequest(tenant=tenant)).keys}[issued.key_id]
    with server.channel(issued.api_key) as ch:
        mine = pb_grpc.GraftStub(ch)
        assert list(mine.ListAdapters(pb.ListAdaptersRequest(tenant=tenant)).adapters) == []
        time.sleep(2.0)
        assert code_of(lambda: mine.ListAdapters(pb.ListAdaptersRequest(tenant=tenant))) == C.UNAUTHENTICATED
    assert code_of(lambda: stub.IssueKey(pb.IssueKeyRequest(tenant=tenant, expires_in_s=-1))) == C.INVALID_ARGUMENT
