"""Every /v1 HTTP operation has one gRPC twin and every RPC is the twin of one, so the two
transports cannot drift apart: a route or an RPC added alone fails here until TWINS pairs it."""
from __future__ import annotations

from fastapi.routing import APIRoute

from service.grpc_server import GraftServicer
from service.http import app
from service.proto.graft.v1 import graft_pb2 as pb

Operation = tuple[str, str]  # (HTTP method, path template)

TWINS: dict[Operation, str] = {
    ("POST", "/v1/embed"): "Embed",
    ("POST", "/v1/predict"): "Predict",
    ("POST", "/v1/tenants"): "CreateTenant",
    ("DELETE", "/v1/tenants/{tenant}"): "DeleteTenant",
    ("POST", "/v1/tenants/{tenant}/keys"): "IssueKey",
    ("GET", "/v1/tenants/{tenant}/keys"): "ListKeys",
    ("DELETE", "/v1/tenants/{tenant}/keys/{key_id}"): "RevokeKey",
    ("POST", "/v1/adapters"): "CreateAdapter",
    ("GET", "/v1/tenants/{tenant}/adapters"): "ListAdapters",
    ("GET", "/v1/tenants/{tenant}/adapters/{adapter}/versions"): "ListVersions",
    ("POST", "/v1/tenants/{tenant}/adapters/{adapter}/promote"): "Promote",
    ("POST", "/v1/tenants/{tenant}/adapters/{adapter}/rollback"): "Rollback",
    ("DELETE", "/v1/tenants/{tenant}/adapters/{adapter}"): "DeleteAdapter",
    ("GET", "/v1/tenants/{tenant}/adapters/{adapter}/versions/{version}/card"): "GetVersionCard",
    ("GET", "/v1/tenants/{tenant}/adapters/{adapter}/versions/{version}/card.png"): "GetVersionCardImage",
    ("POST", "/v1/finetune"): "FineTune",
    ("GET", "/v1/jobs/{job_id}"): "GetJob",
    ("GET", "/v1/jobs/{job_id}/events"): "GetJobEvents",
    ("POST", "/v1/jobs/{job_id}/cancel"): "CancelJob",
    ("GET", "/v1/tenants/{tenant}/jobs"): "ListJobs",
}


def http_operations() -> set[Operation]:
    """The contract's operations: /v1 routes only (not /docs, /openapi.json, health or metrics)."""
    ops: set[Operation] = set()
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path.startswith("/v1/"):
            ops |= {(method, route.path) for method in route.methods if method != "HEAD"}
    return ops


def grpc_methods() -> set[str]:
    return set(pb.DESCRIPTOR.services_by_name["Graft"].methods_by_name)


def test_the_contract_is_seen():
    """Guards the guard: an empty or mis-filtered set would make the parity checks vacuous."""
    assert ("POST", "/v1/predict") in http_operations() and len(http_operations()) >= 17
    assert {"Embed", "Predict"} <= grpc_methods()


def test_every_http_operation_has_a_grpc_twin():
    ops = http_operations()
    unmapped = sorted(ops - TWINS.keys())
    assert not unmapped, f"HTTP operations with no gRPC twin (add an RPC to graft.proto and to TWINS): {unmapped}"
    missing = sorted(f"{m} {p} -> {TWINS[m, p]}" for m, p in ops if TWINS[m, p] not in grpc_methods())
    assert not missing, f"TWINS names RPCs that graft.proto lacks: {missing}"


def test_every_rpc_is_the_twin_of_an_http_operation():
    stale = sorted(f"{m} {p}" for m, p in TWINS.keys() - http_operations())
    assert not stale, f"TWINS names HTTP operations that service/http.py no longer serves: {stale}"
    orphans = sorted(grpc_methods() - set(TWINS.values()))
    assert not orphans, f"RPCs with no HTTP twin (add a route to service/http.py and to TWINS): {orphans}"


def test_twins_are_one_to_one():
    twins = list(TWINS.values())
    assert len(twins) == len(set(twins)), "one RPC is the twin of two HTTP operations"


def test_every_rpc_is_served():
    """The servicer overrides each RPC (the generated base answers UNIMPLEMENTED)."""
    unserved = sorted(m for m in grpc_methods() if m not in vars(GraftServicer))
    assert not unserved, f"RPCs in graft.proto that service/grpc_server.py does not implement: {unserved}"
