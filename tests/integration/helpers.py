"""Small helpers for tests that talk to a running server."""
from __future__ import annotations

import uuid

import httpx
import numpy as np

from adapters import zero_shot
from adapters.format import encode
from adapters.registry import Registry
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
