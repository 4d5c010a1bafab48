"""The OpenAI-compatible embeddings API (service/openai_api.py), called with the real
`openai` package against the real server: the same vectors as /v1/embed, usage counted by
the backbone's own tokenizer, and OpenAI's error shape and client exceptions for bad keys,
models and parameters."""
from __future__ import annotations

import base64

import httpx
import numpy as np
import openai
import pytest

from tests.conftest import SENTENCES
from tests.integration.helpers import new_tenant
from tests.integration.server import ADMIN_KEY, bearer

TEXTS = SENTENCES[:4] + ["word " * 400]  # the last is cut to the 256-token limit


@pytest.fixture(scope="module")
def tenant_key(client):
    return new_tenant(client, "oa")[1]


@pytest.fixture(scope="module")
def oai(server, tenant_key):
    """The OpenAI client as a RAG stack would set it up: base_url and a tenant's Graft key."""
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key=tenant_key, max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(client):
    r = client.post("/v1/embed", json={"inputs": TEXTS, "backbone": "minilm-l6"})
    assert r.status_code == 200, r.text
    return np.array(r.json()["embeddings"], dtype=np.float32)


def test_models_list_the_backbones(oai, client):
    models = {m.id: m for m in oai.models.list()}
    loaded = {b["id"]: b for b in client.get("/readyz").json()["backbones"]}
    assert set(models) == set(loaded) and "minilm-l6" in models
    assert models["minilm-l6"].object == "model" and models["minilm-l6"].owned_by == "graft"
    one = oai.models.retrieve("minilm-l6")
    assert one.id == "minilm-l6" and one.model_extra == {"kind": "text", "dim": 384}


def test_float_vectors_equal_v1_embed(oai, reference):
    out = oai.embeddings.create(model="minilm-l6", input=TEXTS, encoding_format="float")
    assert out.object == "list" and out.model == "minilm-l6"
    assert [d.index for d in out.data] == list(range(len(TEXTS)))
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    assert got.shape == (len(TEXTS), 384)
    assert np.array_equal(got, reference)  # the same float32 values, not merely close


def test_base64_vectors_equal_v1_embed(oai, reference):
    # Explicit base64: the client hands back the string; it is little-endian float32 bytes.
    out = oai.embeddings.create(model="minilm-l6", input=TEXTS, encoding_format="base64")
    raw = [d.embedding for d in out.data]
    assert all(isinstance(s, str) for s in raw)
    got = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in raw])
    assert np.array_equal(got, reference)
    # The client's default asks for base64 and decodes it into floats itself.
    default = oai.embeddings.create(model="minilm-l6", input=TEXTS)
    assert np.array_equal(np.array([d.embedding for d in default.data], dtype=np.float32), reference)


def test_usage_counts_the_backbones_tokens(oai):
    from models.catalog import resolve_spec
    from models.text import load_tokenizer

    tokenizer = load_tokenizer(resolve_spec("minilm-l6"))
    _, mask, truncated = tokenizer.encode(TEXTS)
    expected = int(mask.sum())
    out = oai.embeddings.create(model="minilm-l6", input=TEXTS)
    assert out.usage.prompt_tokens == out.usage.total_tokens == expected
    assert truncated[-1] and mask[-1].sum() == 256  # the long text counts what the model read
    single = oai.embeddings.create(model="minilm-l6", input="hello world")
    assert single.usage.prompt_tokens == 4  # [CLS] hello world [SEP]
    assert len(single.data) == 1


def test_dimensions_equal_to_the_backbones_are_accepted(oai, reference):
    out = oai.embeddings.create(model="minilm-l6", input=TEXTS[:1], dimensions=384, encoding_format="float")
    assert np.array_equal(np.array(out.data[0].embedding, dtype=np.float32), reference[0])


def test_bad_key_is_authentication_error(server):
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="graft_nope_nope", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as e:
            bad.embeddings.create(model="minilm-l6", input="hi")
        assert e.value.status_code == 401
        assert e.value.body["code"] == "invalid_api_key" and e.value.body["type"] == "invalid_request_error"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_unknown_model_is_not_found_with_a_message(oai):
    with pytest.raises(openai.NotFoundError) as e:
        oai.embeddings.create(model="text-embedding-3-small", input="hi")
    assert "text-embedding-3-small" in e.value.message and "minilm-l6" in e.value.message
    assert e.value.body["code"] == "model_not_found" and e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-4o")


@pytest.mark.parametrize("kwargs,param,needle", [
    ({"model": "efficientnet-lite0", "input": "a cat"}, "model", "image backbone"),
    ({"model": "minilm-l6", "input": "hi", "dimensions": 256}, "dimensions", "384"),
    ({"model": "minilm-l6", "input": [[15339, 1917]]}, "input", "token ids"),
    ({"model": "minilm-l6", "input": [15339, 1917]}, "input", "token ids"),
    ({"model": "minilm-l6", "input": []}, "input", "empty"),
    ({"model": "minilm-l6", "input": "hi", "encoding_format": "int8"}, "encoding_format", "base64"),
    ({"model": "minilm-l6", "input": "hi", "extra_body": {"truncate": True}}, "truncate", "unrecognized"),
])
def test_bad_parameters_are_bad_request_naming_the_param(oai, kwargs, param, needle):
    with pytest.raises(openai.BadRequestError) as e:
        oai.embeddings.create(**kwargs)
    assert e.value.body["param"] == param and needle in e.value.message, e.value.body
    assert e.value.body["type"] == "invalid_request_error"


def test_errors_keep_openais_shape_and_graft_status(server):
    """Shapes the client does not exercise: malformed JSON, too many inputs (413), wrong
    method (405); every one `{"error": {message, type, param, code}}`."""
    with httpx.Client(base_url=server.url, headers=bearer(ADMIN_KEY), timeout=30) as c:
        cases = [
            (c.post("/v1/embeddings", content=b"{not json"), 400),
            (c.post("/v1/embeddings", json={"model": "minilm-l6", "input": ["x"] * 65}), 413),
            (c.post("/v1/embeddings", json={"model": "minilm-l6", "input": ["ok", 3]}), 400),
            (c.get("/v1/embeddings"), 405),
            (c.post("/v1/embeddings", json={"input": "hi"}), 400),
        ]
        for r, status in cases:
            assert r.status_code == status, r.text
            error = r.json()["error"]
            assert set(error) == {"message", "type", "param", "code"} and error["message"], error
        assert cases[3][0].headers["allow"] == "POST"
        with httpx.Client(base_url=server.url, timeout=30) as anonymous:
            r = anonymous.post("/v1/embeddings", json={"model": "minilm-l6", "input": "hi"})
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["code"] == "invalid_api_key"


def test_rate_limit_is_429_rate_limit_error(server, tmp_path_factory, graft_home):
    """A tenant past its item rate gets 429 with Retry-After: openai.RateLimitError."""
    from tests.integration.server import Server

    tmp = tmp_path_factory.mktemp("openai-limited")
    srv = Server(graft_home, tmp / "server.log", GRAFT_DATABASE_URL=f"sqlite:///{tmp}/registry.db",
                 GRAFT_RATE_LIMIT_RPS="1", GRAFT_RATE_LIMIT_BURST="3", GRAFT_BACKBONES='["minilm-l6"]',
                 GRAFT_GRPC_PORT="0").start()
    try:
        with srv.client() as admin:
            _, key = new_tenant(admin, "rl")
        with openai.OpenAI(base_url=f"{srv.url}/v1", api_key=key, max_retries=0) as c:
            c.embeddings.create(model="minilm-l6", input=["a", "b", "c"])
            with pytest.raises(openai.RateLimitError) as e:
                c.embeddings.create(model="minilm-l6", input=["a", "b", "c"])
            assert e.value.response.headers.get("retry-after")
            assert e.value.body["code"] == "rate_limit_exceeded"
    finally:
        srv.stop()
