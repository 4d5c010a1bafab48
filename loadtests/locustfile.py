"""Locust users for Graft: HTTP and gRPC predict traffic with tenants drawn Zipf-like, image
embeddings beside it, and a trickle of fine-tune jobs.

    locust -f loadtests/locustfile.py --host http://127.0.0.1:3000   # web UI
    make load                                                        # headless, bounded

Every user calls with its tenant's own key, so key verification, tenant authorisation and
the per-tenant rate limits are under load as in production; the admin key only sets up
(creates tenants and issues each a key for the run, valid a day).

Environment: GRAFT_LOAD_KEY (the admin key, for the set-up), GRAFT_LOAD_TENANTS
(how many tenants, default 100; created with zero-shot adapters when missing),
GRAFT_LOAD_GRPC (host:port of gRPC, default the HTTP host's with port 50051),
GRAFT_LOAD_TEXTS (texts per request, default 16), GRAFT_LOAD_SETUP=0 (the tenants exist:
skip creating them).
"""
from __future__ import annotations

import os
import random
import time
from urllib.parse import urlparse

import grpc.experimental.gevent as grpc_gevent

grpc_gevent.init_gevent()  # grpc's I/O must cooperate with locust's gevent loop

import grpc  # noqa: E402
from locust import FastHttpUser, User, between, constant, events, task  # noqa: E402

from loadtests.common import LOAD_LABELS as LABELS  # noqa: E402
from loadtests.common import load_tenants  # noqa: E402
from service.proto.graft.v1 import graft_pb2 as pb  # noqa: E402
from service.proto.graft.v1 import graft_pb2_grpc as pb_grpc  # noqa: E402

KEY = os.environ.get("GRAFT_LOAD_KEY", "")
TENANTS = load_tenants(int(os.environ.get("GRAFT_LOAD_TENANTS", "100")))
PER_REQUEST = int(os.environ.get("GRAFT_LOAD_TEXTS", "16"))
ZIPF = [1 / (k**1.1) for k in range(1, len(TENANTS) + 1)]
TEXTS = [
    "my parcel never arrived", "I was charged twice", "the app crashes on start", "great service, thanks",
    "how do I reset my password", "refund please", "the delivery was late again", "cannot log in",
    "where is my invoice", "the product broke after a week", "love the new update", "shipping to Canada?",
    "the website is down", "cancel my subscription", "wrong item in the box", "two-factor codes fail",
]


KEYS: dict[str, str] = {}  # tenant -> the key issued to it for this run


def admin() -> dict[str, str]:
    return {"authorization": f"Bearer {KEY}"} if KEY else {}


def auth(tenant: str) -> dict[str, str]:
    """The tenant's own key."""
    return {"authorization": f"Bearer {KEYS[tenant]}"}


def pick_tenant() -> str:
    return random.choices(TENANTS, ZIPF)[0]


def batch() -> list[str]:
    return random.sample(TEXTS * 2, PER_REQUEST)


@events.test_start.add_listener
def create_tenants(environment, **_kwargs):  # type: ignore[no-untyped-def]
    """Tenants with a zero-shot `default` adapter each, unless they exist already; and a key
    for each, issued for this run."""
    import httpx

    setup = os.environ.get("GRAFT_LOAD_SETUP", "1") != "0"
    with httpx.Client(base_url=environment.host, headers=admin(), timeout=60) as c:
        for tenant in TENANTS:
            if setup:
                c.post("/v1/tenants", json={"tenant": tenant})
                c.post("/v1/adapters", json={"tenant": tenant, "labels": LABELS})
            r = c.post(f"/v1/tenants/{tenant}/keys", json={"expires_in_s": 86400})
            r.raise_for_status()
            KEYS[tenant] = r.json()["api_key"]


class HttpPredictUser(FastHttpUser):
    wait_time = constant(0)

    @task
    def predict(self) -> None:
        tenant = pick_tenant()
        self.client.post("/v1/predict", json={"tenant": tenant, "inputs": batch()}, headers=auth(tenant),
                         name="POST /v1/predict")


class GrpcPredictUser(User):
    wait_time = constant(0)

    def on_start(self) -> None:
        target = os.environ.get("GRAFT_LOAD_GRPC") or f"{urlparse(self.host).hostname}:50051"
        self.channel = grpc.insecure_channel(target)
        self.stub = pb_grpc.GraftStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def predict(self) -> None:
        tenant = pick_tenant()
        request = pb.PredictRequest(tenant=tenant, inputs=batch())
        started = time.perf_counter()
        error: Exception | None = None
        size = 0
        try:
            size = self.stub.Predict(request, metadata=list(auth(tenant).items()), timeout=30).ByteSize()
        except grpc.RpcError as e:
            error = e
        events.request.fire(request_type="grpc", name="Predict", response_time=(time.perf_counter() - started) * 1000,
                            response_length=size, exception=error, context={})


def _pictures() -> list[dict[str, str]]:
    """Sixteen drawn 320 x 240 JPEGs, base64, as image items."""
    import base64

    from tests.images import encode, picture

    return [{"image": base64.b64encode(encode(picture(i, size=(320, 240)), "JPEG", quality=90)).decode()}
            for i in range(16)]


class HttpImageUser(FastHttpUser):
    """Image traffic on the same server: 4 pictures per /v1/embed (efficientnet-lite0)."""

    wait_time = constant(0)
    weight = 1
    pictures = _pictures()

    @task
    def embed(self) -> None:
        self.client.post("/v1/embed", json={"backbone": "efficientnet-lite0", "inputs": random.sample(self.pictures, 4)},
                         headers=auth(pick_tenant()), name="POST /v1/embed (images)")


class FineTuneUser(FastHttpUser):
    """A trickle of fine-tune jobs while the others predict."""

    wait_time = between(20, 40)
    weight = 1

    @task
    def finetune(self) -> None:
        examples = [{"text": t, "label": LABELS[i % len(LABELS)]} for i, t in enumerate(TEXTS)]
        tenant = pick_tenant()
        self.client.post("/v1/finetune", json={"tenant": tenant, "adapter": "tuned", "examples": examples,
                                               "params": {"method": "head", "epochs": 20}}, headers=auth(tenant), name="POST /v1/finetune")
