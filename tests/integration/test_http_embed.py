"""The real server over HTTP on loopback: contract, errors, batching, probes, metrics."""
from __future__ import annotations

import base64
import concurrent.futures as cf
import re
import threading

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


def _metric_sum(client, name: str, backbone: str) -> float:
    text = client.get("/metrics").text
    return sum(float(v) for v in re.findall(rf'^{name}{{backbone="{backbone}"}} ([0-9.e+]+)$', text, re.M))


def _concurrently(n: int, call) -> list:
    barrier = threading.Barrier(n)

    def run(i: int):
        barrier.wait()  # all at once, so the micro-batcher sees company
        return call(i)

    with cf.ThreadPoolExecutor(n) as pool:
        return list(pool.map(run, range(n)))


def test_concurrent_requests_share_backbone_passes(client):
    """#14.18: concurrent requests share micro-batches (fewer passes than requests), and
    each pass costs the ORT calls the backbone's rows-per-call says: counted, not assumed.
    Text served as int8 runs row by row (max_rows_per_call 1), so there batching saves
    queue passes but not ORT calls; fp32 text and images save ORT calls too."""
    text = next(b for b in client.get("/readyz").json()["backbones"] if b["id"] == "minilm-l6")
    before = {m: _metric_sum(client, m, "minilm-l6") for m in (
        "graft_backbone_batch_size_count", "graft_backbone_batch_size_sum", "graft_backbone_ort_calls_total")}
    texts = [f"concurrent request number {i} about shipping and refunds" for i in range(16)]

    def call(i: int) -> list[list[float]]:
        r = client.post("/v1/embed", json={"inputs": texts[i % 16 :] + texts[: i % 16]})
        assert r.status_code == 200, r.text
        return r.json()["embeddings"]

    results = _concurrently(48, call)
    # Each caller gets its own rows back, in its own order.
    base = np.array(results[0])
    for i, rows in enumerate(results):
        assert np.allclose(np.roll(np.array(rows), i % 16, axis=0), base, atol=1e-5)
    passes, items, calls = (_metric_sum(client, m, "minilm-l6") - v for m, v in before.items())
    assert items == 48 * 16, [l for l in client.get("/metrics").text.splitlines() if "batch_size_sum" in l]
    assert passes < 48, f"{passes} backbone passes for 48 concurrent requests: no batching"
    rows_per_call = text["max_rows_per_call"]
    # Each pass cuts its rows into sub-batches of at most rows_per_call (and by padding).
    assert items / rows_per_call <= calls <= items, (calls, items, rows_per_call)
    if rows_per_call > 1:
        assert calls < items


def test_concurrent_image_requests_share_ort_calls(client):
    """One image per request, 16 requests at once: fewer ORT calls than requests."""
    from tests.images import png

    image = base64.b64encode(png(1)).decode()
    before = _metric_sum(client, "graft_backbone_ort_calls_total", "efficientnet-lite0")

    def call(i: int) -> None:
        r = client.post("/v1/embed", json={"backbone": "efficientnet-lite0", "inputs": [{"image": image}]})
        assert r.status_code == 200, r.text

    _concurrently(16, call)
    calls = _metric_sum(client, "graft_backbone_ort_calls_total", "efficientnet-lite0") - before
    assert 1 <= calls < 16, f"{calls} ORT calls for 16 concurrent one-image requests: no batching"


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


def _stage_counts(client) -> dict[str, float]:
    text = client.get("/metrics").text
    return {m[0]: float(m[1]) for m in re.findall(r'^graft_stage_seconds_count\{stage="(\w+)"\} ([0-9.e+]+)$', text, re.M)}


def _requests(client, route: str, code: int) -> float:
    text = client.get("/metrics").text
    pattern = rf'^graft_http_requests_total\{{code="{code}",method="\w+",route="{re.escape(route)}"\}} ([0-9.e+]+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def test_every_stage_of_a_request_is_timed_in_the_metrics(client):
    """#17.1: the service reports where a request's time goes, by stage (graft_stage_seconds):
    parse, auth, prepare, queue, model, handoff, serialise for an embedding; head for a
    prediction; one observation per request (per pass for model and head)."""
    tenant = client.post("/v1/tenants", json={"tenant": f"stages-{np.random.randint(1 << 30)}"}).json()
    before = _stage_counts(client)
    assert client.post("/v1/embed", json={"inputs": ["one lone text"]}).status_code == 200
    after = _stage_counts(client)
    for stage in ("parse", "auth", "prepare", "queue", "model", "handoff", "serialise"):
        assert after.get(stage, 0) - before.get(stage, 0) >= 1, stage
    key = {"authorization": f"Bearer {tenant['api_key']}"}
    client.post("/v1/adapters", json={"tenant": tenant["tenant"], "adapter": "s", "labels": ["a", "b"]}, headers=key)
    before = _stage_counts(client)
    r = client.post("/v1/predict", json={"tenant": tenant["tenant"], "adapter": "s", "inputs": ["x", "y" * 2000]},
                    headers=key)
    assert r.status_code == 200, r.text
    after = _stage_counts(client)
    for stage in ("head", "admit", "prepare", "model"):  # a tenant key is rate limited: admit
        assert after.get(stage, 0) - before.get(stage, 0) >= 1, stage


def test_request_metrics_count_by_route_template_and_status(client):
    """The plain-ASGI request metrics see the status actually sent, errors included."""
    before_ok, before_bad = _requests(client, "/v1/embed", 200), _requests(client, "/v1/embed", 400)
    before_job = _requests(client, "/v1/jobs/{job_id}", 404)
    client.post("/v1/embed", json={"inputs": ["fine"]})
    client.post("/v1/embed", json={"inputs": []})
    client.get("/v1/jobs/no-such-job")
    assert _requests(client, "/v1/embed", 200) == before_ok + 1
    assert _requests(client, "/v1/embed", 400) == before_bad + 1
    assert _requests(client, "/v1/jobs/{job_id}", 404) == before_job + 1
