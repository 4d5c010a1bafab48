"""BentoML's own clients (service/bento_api.py), the real `bentoml.SyncHTTPClient` and
`bentoml.AsyncHTTPClient` against the real server: they list and call `embed` and
`predict` with a Graft key as `token=`, get /v1's answers, and raise with Graft's status and
message; plain HTTP callers see the same contract as before."""
from __future__ import annotations

import asyncio
import json
import re
from http import HTTPStatus

import bentoml
import httpx
import numpy as np
import pytest
from bentoml.exceptions import BentoMLException, InvalidArgument, NotFound

from service.schemas import EmbedRequest, PredictRequest
from tests.conftest import SENTENCES
from tests.integration.helpers import new_tenant
from tests.integration.server import ADMIN_KEY, Server, bearer

TEXTS = SENTENCES[:4] + ["word " * 400]  # the last is cut to the 256-token limit
LABELS = ["refund", "shipping", "account"]
ASKED = ["my parcel never arrived", "I want my money back", "I cannot log in to my account"]


@pytest.fixture(scope="module")
def tenant(client):
    """A tenant, its key and a zero-shot adapter made over plain HTTP with that key."""
    name, key = new_tenant(client, "bento")
    with httpx.Client(base_url=str(client.base_url), headers=bearer(key), timeout=60) as own:
        r = own.post("/v1/adapters", json={"tenant": name, "adapter": "support", "labels": LABELS})
        assert r.status_code == 201, r.text
    return name, key


@pytest.fixture(scope="module")
def bento(server, tenant):
    """BentoML's client as its users write it: the URL and a Graft key as the token."""
    with bentoml.SyncHTTPClient(server.url, token=tenant[1], timeout=60) as c:
        yield c


def graft_error(exc: BentoMLException) -> dict:
    """Graft's `{"error": {...}}`, which BentoML's client puts in the exception's message."""
    return json.loads(str(exc))["error"]


def test_client_lists_embed_and_predict_with_their_schemas(bento):
    assert {"embed", "predict"} <= set(bento.endpoints)
    assert bento.endpoints["embed"].route == "/embed" and bento.endpoints["predict"].route == "/predict"
    # The typed parameters are /v1's request fields, nothing more or less.
    assert set(bento.endpoints["embed"].input["properties"]) == set(EmbedRequest.model_fields)
    assert set(bento.endpoints["predict"].input["properties"]) == set(PredictRequest.model_fields)
    assert set(bento.endpoints["predict"].input["required"]) == {"tenant", "inputs"}
    assert set(bento.endpoints["embed"].output["properties"]) == {"backbone", "dim", "embeddings", "truncated"}


def test_embed_equals_v1_embed(bento, client):
    expected = client.post("/v1/embed", json={"inputs": TEXTS}).json()
    out = bento.embed(inputs=TEXTS)
    assert out["backbone"] == "minilm-l6" and out["dim"] == 384 and out["truncated"] == [4]
    assert np.array_equal(np.array(out["embeddings"], dtype=np.float32),
                          np.array(expected["embeddings"], dtype=np.float32))
    assert bento.embed(TEXTS[:2], "minilm-l6")["embeddings"] == expected["embeddings"][:2]  # positional too


def test_the_same_bytes_as_v1(server, tenant):
    """The BentoML endpoints answer with /v1's own bodies, byte for byte."""
    name, key = tenant
    with server.client(key) as c:
        for path, body in (("embed", {"inputs": TEXTS[:3]}),
                           ("predict", {"tenant": name, "adapter": "support", "inputs": ASKED, "top_k": 2})):
            ours, v1 = c.post(f"/{path}", json=body), c.post(f"/v1/{path}", json=body)
            assert ours.status_code == v1.status_code == 200, ours.text
            assert ours.content == v1.content and ours.headers["content-type"] == "application/json"
        # JSON whatever Content-Type says, as /v1 reads it (curl -d sends a form type), never
        # BentoML's form or pickle parsers.
        for content_type in ("application/x-www-form-urlencoded", "application/vnd.bentoml+pickle"):
            r = c.post("/embed", content=b'{"inputs": ["hi"]}', headers={"content-type": content_type})
            assert r.status_code == 200 and r.json()["dim"] == 384, r.text


def test_predict_with_a_zero_shot_adapter(bento, tenant, client):
    name, _ = tenant
    out = bento.predict(tenant=name, adapter="support", inputs=ASKED, top_k=2)
    expected = client.post("/v1/predict", json={"tenant": name, "adapter": "support", "inputs": ASKED,
                                                 "top_k": 2}).json()
    assert out == expected
    assert (out["tenant"], out["adapter"], out["version"]) == (name, "support", 1)
    assert [p["label"] for p in out["predictions"]] == ["shipping", "refund", "account"]
    assert all(len(p["top"]) == 2 and p["label"] in LABELS for p in out["predictions"])


def test_a_tenant_key_reaches_only_its_own_tenant(server, bento, client, tenant):
    other, other_key = new_tenant(client, "bento-other")
    r = client.post("/v1/adapters", json={"tenant": other, "adapter": "support", "labels": LABELS})
    assert r.status_code == 201, r.text
    with pytest.raises(NotFound) as e:
        bento.predict(tenant=other, adapter="support", inputs=["hi"])
    assert e.value.error_code == HTTPStatus.NOT_FOUND
    assert graft_error(e.value) == {"code": "not_found", "message": f"unknown tenant '{other}'"}
    with bentoml.SyncHTTPClient(server.url, token=other_key) as theirs:  # its own key works
        assert theirs.predict(tenant=other, adapter="support", inputs=["hi"])["tenant"] == other
    with bentoml.SyncHTTPClient(server.url, token=ADMIN_KEY) as admin:  # so does the admin's
        assert admin.predict(tenant=tenant[0], adapter="support", inputs=["hi"])["tenant"] == tenant[0]


@pytest.mark.parametrize("token,message", [
    ("not-a-graft-key", "the key is not valid (unknown, malformed, expired or revoked)"),
    (None, "send your key as `Authorization: Bearer <key>`"),
])
def test_a_bad_key_raises_401_with_grafts_message(server, tenant, token, message, monkeypatch):
    monkeypatch.delenv("BENTO_CLOUD_API_KEY", raising=False)  # the client's fallback token
    with bentoml.SyncHTTPClient(server.url, token=token) as c:
        for call in (lambda: c.embed(inputs=["hello"]),
                     lambda: c.predict(tenant=tenant[0], adapter="support", inputs=["hello"])):
            with pytest.raises(BentoMLException) as e:
                call()
            assert e.value.error_code == HTTPStatus.UNAUTHORIZED
            assert graft_error(e.value) == {"code": "unauthenticated", "message": message}


BAD_CALLS = [
    ("embed", {"inputs": []}, InvalidArgument, 400, "inputs is empty: send at least one item"),
    ("embed", {"inputs": ["ok", 7]}, InvalidArgument, 400, "inputs.1"),
    ("embed", {"inputs": ["a"], "backbone": "no-such-model"}, NotFound, 404, "no-such-model"),
    ("embed", {"inputs": ["x"] * 65}, BentoMLException, 413, "GRAFT_MAX_BATCH_ITEMS"),
    ("embed", {"inputs": ["y" * (5 * 1024 * 1024)]}, BentoMLException, 413, "GRAFT_MAX_BODY_MB"),
    ("predict", {"adapter": "no-such-adapter", "inputs": ["hi"]}, NotFound, 404, "no-such-adapter"),
    ("predict", {"adapter": "support", "inputs": []}, InvalidArgument, 400, "inputs is empty"),
    ("predict", {"adapter": "support", "inputs": ["hi"], "top_k": 0}, InvalidArgument, 400, "top_k"),
    ("predict", {"adapter": "Bad Name", "inputs": ["hi"]}, InvalidArgument, 400, "adapter"),
]


@pytest.mark.parametrize("method,kwargs,kind,status,needle", BAD_CALLS)
def test_bad_input_raises_with_the_right_status_and_message(bento, tenant, method, kwargs, kind, status, needle):
    if method == "predict":
        kwargs = {"tenant": tenant[0], **kwargs}
    with pytest.raises(kind) as e:
        getattr(bento, method)(**kwargs)
    assert e.value.error_code == status
    err = graft_error(e.value)
    assert err["code"] and needle in err["message"], err


def test_async_client(server, tenant, client):
    name, key = tenant
    expected = client.post("/v1/embed", json={"inputs": TEXTS[:2]}).json()

    async def main() -> None:
        async with bentoml.AsyncHTTPClient(server.url, token=key) as c:
            assert {"embed", "predict"} <= set(c.endpoints)
            out = await c.embed(inputs=TEXTS[:2])
            assert out["embeddings"] == expected["embeddings"]
            both = await asyncio.gather(c.predict(tenant=name, adapter="support", inputs=ASKED[:1]),
                                        c.predict(tenant=name, adapter="support", inputs=ASKED[1:2]))
            assert [b["predictions"][0]["label"] for b in both] == ["shipping", "refund"]
        async with bentoml.AsyncHTTPClient(server.url, token="wrong") as bad:
            with pytest.raises(BentoMLException) as e:
                await bad.embed(inputs=["hi"])
            assert e.value.error_code == HTTPStatus.UNAUTHORIZED and graft_error(e.value)["code"] == "unauthenticated"

    asyncio.run(main())


def test_plain_http_callers_see_the_same_contract(server, client):
    # Unknown paths and wrong methods: still the app's JSON errors, BentoML's routes or not.
    for method, path in (("GET", "/no/such/path"), ("POST", "/v1/nothing"), ("GET", "/")):
        r = client.request(method, path)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"]["code"] == "not_found" and path in r.json()["error"]["message"]
    r = client.get("/v1/embed")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = client.get("/embed")  # the BentoML endpoint takes POST only, and says so the same way
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["code"] == "method_not_allowed"
    # Without a key, /v1 and the BentoML endpoint answer alike, before reading the body.
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for path in ("/v1/embed", "/embed"):
            r = anonymous.post(path, content=b"{not json")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
            assert r.json()["error"]["code"] == "unauthenticated"
    # Bad bodies get Graft's 400 naming the field on both, not BentoML's validation shape.
    for path in ("/v1/embed", "/embed"):
        r = client.post(path, json={"inputs": ["a"], "unexpected": True})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_input" and "unexpected" in r.text
    # BentoML's schema lists the endpoints; the HTTP app's OpenAPI and docs are unchanged.
    routes = {r["name"]: r["route"] for r in client.get("/schema.json").json()["routes"]}
    assert routes == {"embed": "/embed", "predict": "/predict"}
    assert "/v1/embed" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    # Request metrics by route, the BentoML endpoints included.
    metrics = client.get("/metrics").text
    assert re.search(r'graft_http_requests_total\{code="200",method="POST",route="/embed"\} [1-9]', metrics)
    assert re.search(r'graft_http_requests_total\{code="200",method="POST",route="/v1/embed"\} [1-9]', metrics)


def test_the_rate_limit_is_429_with_retry_after(graft_home, tmp_path_factory):
    """A tenant past its item rate: 429 with Graft's message, whichever endpoint it calls."""
    tmp = tmp_path_factory.mktemp("bento-limited")
    srv = Server(graft_home, tmp / "server.log", GRAFT_DATABASE_URL=f"sqlite:///{tmp}/registry.db",
                 GRAFT_RATE_LIMIT_RPS="0.5", GRAFT_RATE_LIMIT_BURST="3", GRAFT_BACKBONES='["minilm-l6"]',
                 GRAFT_GRPC_PORT="0", GRAFT_TRAIN_WORKERS="0").start()
    try:
        with srv.client() as admin:
            _, key = new_tenant(admin, "rl")
        with bentoml.SyncHTTPClient(srv.url, token=key) as c:
            c.embed(inputs=["a", "b", "c"])
            with pytest.raises(BentoMLException) as e:
                c.embed(inputs=["a", "b", "c"])
            assert e.value.error_code == HTTPStatus.TOO_MANY_REQUESTS
            assert graft_error(e.value)["code"] == "rate_limited"
        with srv.client(key) as plain:  # the same bucket: /v1/embed is refused too, with Retry-After
            r = plain.post("/embed", json={"inputs": ["a", "b", "c"]})
            assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
            assert plain.post("/v1/embed", json={"inputs": ["a", "b", "c"]}).status_code == 429
    finally:
        srv.stop()
