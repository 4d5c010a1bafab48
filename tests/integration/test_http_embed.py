"""The real server over HTTP on loopback: contract, errors, batching, probes, metrics."""
from __future__ import annotations

import concurrent.futures as cf
import re

import numpy as np
import pytest

from models import load_backbone
from tests.conftest import SENTENCES


def test_embed_matches_backbone_in_process(client, graft_home):
    r = client.post("/v1/embed", json={"inputs": SENTENCES[:5]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["backbone"] == "minilm-l6" and body["dim"] == 384
    got = np.array(body["embeddings"], dtype=np.float32)
    assert got.shape == (5, 384)
    expected = load_backbone("minilm-l6", graft_home, precision="int8").embed(SENTENCES[:5]).vectors
    assert np.abs(got - expected).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)


def test_similar_texts_are_closer_than_unrelated(client):
    texts = ["I want my money back", "please refund my purchase", "the weather is sunny today"]
    e = np.array(client.post("/v1/embed", json={"inputs": texts}).json()["embeddings"])
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2


def test_named_backbone_and_truncation_reported(client):
    long_text = "word " * 400
    r = client.post("/v1/embed", json={"inputs": ["short", long_text, "also short"], "backbone": "minilm-l6"})
    assert r.status_code == 200
    assert r.json()["truncated"] == [1]


def test_curl_style_form_content_type_is_read_as_json(client):
    r = client.post("/v1/embed", content=b'{"inputs": ["hi"]}',
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200


BAD_REQUESTS = [
    (b"{not json", 400, "Invalid JSON"),
    (b"", 400, "Invalid JSON"),
    (b"[]", 400, "object"),
    (b"{}", 400, "inputs"),
    (b'{"inputs": []}', 400, "empty"),
    (b'{"inputs": "one string"}', 400, "array"),
    (b'{"inputs": [1, 2]}', 400, "inputs.0"),
    (b'{"inputs": ["ok", null]}', 400, "inputs.1"),
    (b'{"inputs": [{"image": "abc"}]}', 400, "inputs[0]: image is not valid base64"),
    (b'{"inputs": [{"image": "aGVsbG8="}]}', 400, "inputs[0]: backbone 'minilm-l6' embeds text: send a string, not an image"),
    (b'{"inputs": ["a"], "unexpected": true}', 400, "unexpected"),
    (b'{"inputs": ["a"], "backbone": 7}', 400, "backbone"),
    (b'{"inputs": ["a"], "backbone": "no-such-model"}', 404, "no-such-model"),
    (b'{"inputs": ["a"], "backbone": "../../etc/passwd"}', 404, "unknown backbone"),
    (b'{"inputs": [' + b",".join([b'"x"'] * 65) + b"]}", 413, "GRAFT_MAX_BATCH_ITEMS"),
    (b'{"inputs": ["ok", "' + b"y" * 5001 + b'"]}', 413, "inputs[1]"),
]


@pytest.mark.parametrize("payload,status,needle", BAD_REQUESTS)
def test_bad_input_gets_clear_4xx(client, payload, status, needle):
    r = client.post("/v1/embed", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] and needle in err["message"] + str(err.get("details", ""))


def test_wrong_method_and_path(client):
    assert client.get("/v1/embed").status_code == 405
    assert client.post("/v1/nothing", json={}).status_code == 404


def test_concurrent_requests_share_backbone_passes(client):
    def metric_sum(name: str) -> float:
        text = client.get("/metrics").text
        return sum(float(v) for v in re.findall(rf'^{name}{{backbone="minilm-l6"}} ([0-9.e+]+)$', text, re.M))

    passes_before = metric_sum("graft_backbone_batch_size_count")
    items_before = metric_sum("graft_backbone_batch_size_sum")
    texts = [f"concurrent request number {i} about shipping and refunds" for i in range(16)]

    def call(i: int) -> list[list[float]]:
        r = client.post("/v1/embed", json={"inputs": texts[i % 16 :] + texts[: i % 16]})
        assert r.status_code == 200, r.text
        return r.json()["embeddings"]

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(48)))
    # Each caller gets its own rows back, in its own order.
    base = np.array(results[0])
    for i, rows in enumerate(results):
        assert np.allclose(np.roll(np.array(rows), i % 16, axis=0), base, atol=1e-5)
    passes = metric_sum("graft_backbone_batch_size_count") - passes_before
    items = metric_sum("graft_backbone_batch_size_sum") - items_before
    assert items == 48 * 16, [l for l in client.get("/metrics").text.splitlines() if "batch_size_sum" in l]
    assert passes < 48, f"{passes} backbone passes for 48 concurrent requests: no batching"


def test_probes_and_metrics(client):
    assert client.get("/livez").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["status"] == "ready"
    bb, image = body["backbones"]
    assert image["id"] == "efficientnet-lite0" and image["kind"] == "image" and image["dim"] == 1280
    assert bb["provider"] == "CPUExecutionProvider" and bb["precision"] == "int8" and bb["dim"] == 384
    gate = bb["int8_gate"]
    assert gate["recipe"].startswith("smoothquant-") and gate["measured"][gate["recipe"]]["min_cosine"] >= 0.98
    assert image["precision"] == image["int8_gate"]["precision"]  # fp32 where no image recipe is exact
    metrics = client.get("/metrics").text
    for name in ("graft_backbone_batch_size_bucket", "graft_backbone_compute_seconds_bucket",
                 "graft_backbone_info", "graft_http_request_duration_seconds_bucket"):
        assert name in metrics, name
    assert "bentoml_service_request" not in metrics  # BentoML's per-path series are off


def test_openapi_describes_embed(client):
    spec = client.get("/openapi.json").json()
    assert "/v1/embed" in spec["paths"]


def test_unknown_routes_and_wrong_methods_answer_in_the_json_error_shape(client):
    r = client.get("/v1/nothing-here")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/embed")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert "POST" in r.headers["allow"]
