"""Small helpers for tests that talk to a running server."""
from __future__ import annotations

import concurrent.futures as cf
import uuid
from typing import Any

import httpx
import numpy as np

from adapters import zero_shot
from adapters.format import encode
from adapters.registry import Registry
from service.proto.graft.v1 import graft_pb2 as pb
from service.proto.graft.v1 import graft_pb2_grpc as pb_grpc
from tests.integration.server import SIGNING_KEY


def add_zero_shot_version(client: httpx.Client, registry_url: str, tenant: str, adapter: str,
                          labels: list[str], texts: list[str], *, activate: bool = False) -> int:
    """Register a new version the way a training worker would: real embeddings, new head."""
    vectors = np.array(client.post("/v1/embed", json={"inputs": texts}).json()["embeddings"], dtype=np.float32)
    ready = client.get("/readyz").json()["backbones"][0]
    config, tensors = zero_shot.build(ready["id"], ready["fingerprint"], labels, vectors)
    registry = Registry(registry_url, migrate=False, signing_key=SIGNING_KEY.encode())  # as the server signs
    try:
        return registry.add_version(tenant, adapter, *encode(config, tensors), activate=activate)
    finally:
        registry.close()


def new_tenant(admin: httpx.Client, prefix: str = "t") -> tuple[str, str]:
    """A fresh tenant (created with the admin client) and its first key."""
    tenant = f"{prefix}-{uuid.uuid4().hex[:8]}"
    r = admin.post("/v1/tenants", json={"tenant": tenant})
    assert r.status_code == 201, r.text
    return tenant, r.json()["api_key"]


def held_out_accuracy(client: httpx.Client, tenant: str, adapter: str,
                      held_out: list[tuple[str, str]]) -> tuple[float, list[dict]]:
    """The adapter's accuracy on (text, label) pairs over /v1/predict, and its predictions."""
    predictions: list[dict] = []
    for i in range(0, len(held_out), 40):  # the test server takes 64 items a request
        r = client.post("/v1/predict", json={"tenant": tenant, "adapter": adapter,
                                             "inputs": [t for t, _ in held_out[i : i + 40]]})
        assert r.status_code == 200, r.text
        predictions += r.json()["predictions"]
    return sum(p["label"] == label for p, (_, label) in zip(predictions, held_out)) / len(held_out), predictions


def assert_mixed_answers_equal_alone(server: Any, owners: dict[str, tuple[str, str]],
                                     held_out: list[tuple[str, str]], alone: dict[str, list[dict]]) -> None:
    """Requests of every adapter in `owners` (adapter -> (tenant, key)), all at once, half over
    HTTP and half over gRPC (tenants and adapter kinds mixed in the server's batches): every
    answer equals `alone[adapter]`, the one the same request got alone."""
    names = list(owners)

    def call(i: int) -> tuple[str, list[dict]]:
        adapter = names[i % len(names)]
        tenant, key = owners[adapter]
        if i % 2:
            with server.client(key) as c:
                return adapter, held_out_accuracy(c, tenant, adapter, held_out)[1]
        with server.channel(key) as channel:
            stub, out = pb_grpc.GraftStub(channel), []
            for j in range(0, len(held_out), 40):
                reply = stub.Predict(pb.PredictRequest(tenant=tenant, adapter=adapter,
                                                       inputs=[t for t, _ in held_out[j : j + 40]]))
                out += [{"label": p.label, "score": p.score} for p in reply.predictions]
            return adapter, out

    with cf.ThreadPoolExecutor(9) as pool:
        results = list(pool.map(call, range(6 * len(names))))
    assert {a for a, _ in results} == set(names)
    for adapter, predictions in results:
        assert len(predictions) == len(held_out)
        for got, want in zip(predictions, alone[adapter]):
            assert got["label"] == want["label"] and abs(got["score"] - want["score"]) < 1e-4, adapter
