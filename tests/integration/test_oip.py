"""The Open Inference Protocol v2 (service/oip.py), called with the real `tritonclient[http]`
against the real server: health, metadata, infer on a backbone (text and image; binary tensor
data, which tritonclient sends and asks for by default, and the JSON form) and on a
tenant's zero-shot adapter (`<tenant>.<adapter>`), auth and errors in the v2 shape."""
from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.conftest import SENTENCES
from tests.images import jpeg, png
from tests.integration.helpers import new_tenant
from tests.integration.server import ADMIN_KEY, bearer

TEXTS = SENTENCES[:6]
LABELS = ["refund", "shipping", "account"]
ASK = ["I want my money back", "my parcel never arrived", "I cannot log in to my account"]


@pytest.fixture(scope="module")
def tc(server):
    c = triton.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


def admin() -> dict[str, str]:
    """A fresh headers dict per call: tritonclient writes Inference-Header-Content-Length
    into the dict it is given, so one reused across calls would carry a stale length."""
    return bearer(ADMIN_KEY)


@pytest.fixture(scope="module")
def tenant(client):
    """A tenant with a zero-shot adapter `support` (POST /v1/adapters, as the README shows)."""
    name, key = new_tenant(client, "oip")
    r = client.post("/v1/adapters", headers=bearer(key), json={"tenant": name, "adapter": "support", "labels": LABELS})
    assert r.status_code == 201, r.text
    return name, key


def texts_input(texts: list[str], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("text", [len(texts)], "BYTES")
    return tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_), binary_data=binary)


def embed(client, texts_or_items, backbone: str = "minilm-l6") -> np.ndarray:
    r = client.post("/v1/embed", json={"inputs": texts_or_items, "backbone": backbone})
    assert r.status_code == 200, r.text
    return np.array(r.json()["embeddings"], dtype=np.float32)


def test_health_is_open(tc, server):
    assert tc.is_server_live() and tc.is_server_ready()  # no key: probes carry none
    assert httpx.get(f"{server.url}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{server.url}/v2/health/ready").json() == {"ready": True}


def test_server_and_backbone_metadata(tc):
    server = tc.get_server_metadata(headers=admin())
    assert server["name"] == "graft" and "binary_tensor_data" in server["extensions"]
    meta = tc.get_model_metadata("minilm-l6", headers=admin())
    assert meta["name"] == "minilm-l6"
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]}]
    image = tc.get_model_metadata("efficientnet-lite0", headers=admin())
    assert image["inputs"][0]["name"] == "image" and image["outputs"][0]["shape"] == [-1, 1280]
    assert tc.is_model_ready("minilm-l6", headers=admin())
    assert not tc.is_model_ready("no-such-model", headers=admin())


def test_backbone_infer_binary_equals_v1_embed(tc, client):
    """tritonclient's defaults: binary input, binary outputs (binary_data_output)."""
    result = tc.infer("minilm-l6", [texts_input(TEXTS)], headers=admin())
    got = result.as_numpy("embedding")
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 384)
    assert np.array_equal(got, embed(client, TEXTS))
    assert result.get_output("embedding")["parameters"]["binary_data_size"] == got.nbytes


def test_backbone_infer_json_form_equals_v1_embed(tc, client):
    result = tc.infer("minilm-l6", [texts_input(TEXTS, binary=False)],
                      outputs=[triton.InferRequestedOutput("embedding", binary_data=False)], headers=admin())
    assert "data" in result.get_output("embedding")
    assert np.array_equal(result.as_numpy("embedding"), embed(client, TEXTS))


def test_nested_data_and_2d_shape(server, client):
    """The JSON form with `data` nested as the shape is ([n, 1], as Triton's BYTES models take)."""
    body = {"id": "r1", "inputs": [{"name": "text", "shape": [2, 1], "datatype": "BYTES", "data": [["hi"], ["yo"]]}]}
    r = httpx.post(f"{server.url}/v2/models/minilm-l6/infer", json=body, headers=bearer(ADMIN_KEY), timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model_name"] == "minilm-l6" and out["id"] == "r1"
    (tensor,) = out["outputs"]
    assert tensor["shape"] == [2, 384] and len(tensor["data"]) == 2 * 384
    assert np.array_equal(np.array(tensor["data"], dtype=np.float32).reshape(2, 384), embed(client, ["hi", "yo"]))


def test_image_backbone_takes_raw_bytes_and_base64(tc, client):
    images = [png(1), jpeg(2)]
    expected = embed(client, [{"image": base64.b64encode(i).decode()} for i in images], "efficientnet-lite0")
    tensor = triton.InferInput("image", [2], "BYTES").set_data_from_numpy(np.array(images, dtype=np.object_))
    got = tc.infer("efficientnet-lite0", [tensor], headers=admin()).as_numpy("embedding")
    assert got.shape == (2, 1280) and np.array_equal(got, expected)
    b64 = triton.InferInput("image", [2], "BYTES").set_data_from_numpy(
        np.array([base64.b64encode(i) for i in images], dtype=np.object_), binary_data=False)
    assert np.array_equal(tc.infer("efficientnet-lite0", [b64], headers=admin()).as_numpy("embedding"), expected)


def test_adapter_metadata_lists_its_labels(tc, tenant):
    name, key = tenant
    meta = tc.get_model_metadata(f"{name}.support", headers=bearer(key))
    assert meta["versions"] == ["1"] and meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                               {"name": "scores", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["parameters"]["labels"] == sorted(LABELS) and meta["parameters"]["active_version"] == 1
    assert tc.is_model_ready(f"{name}.support", headers=bearer(key))
    assert tc.is_model_ready(f"{name}.support", model_version="1", headers=bearer(key))
    assert not tc.is_model_ready(f"{name}.nothing", headers=bearer(key))


@pytest.mark.parametrize("binary", [True, False])
def test_adapter_infer_equals_v1_predict(tc, tenant, client, binary):
    name, key = tenant
    outputs = [triton.InferRequestedOutput(o, binary_data=binary) for o in ("label", "scores")]
    result = tc.infer(f"{name}.support", [texts_input(ASK, binary)], outputs=outputs, headers=bearer(key))
    r = client.post("/v1/predict", json={"tenant": name, "adapter": "support", "inputs": ASK, "top_k": 3})
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    # Binary BYTES come back as bytes; in the JSON form tritonclient keeps the strings.
    labels = [b.decode() if isinstance(b, bytes) else b for b in result.as_numpy("label")]
    assert labels == [p["label"] for p in predictions] == ["refund", "shipping", "account"]
    scores = result.as_numpy("scores")
    order = result.get_output("scores")["parameters"]["labels"]
    assert order == sorted(LABELS) and scores.shape == (3, 3)
    expected = np.array([[{t["label"]: t["score"] for t in p["top"]}[label] for label in order]
                         for p in predictions], dtype=np.float32)
    assert np.array_equal(scores, expected)
    assert result.get_response()["model_version"] == "1"


def test_adapter_versions_path_serves_only_the_active_version(tc, tenant):
    name, key = tenant
    ok = tc.infer(f"{name}.support", [texts_input(ASK[:1])], model_version="1", headers=bearer(key))
    assert ok.as_numpy("label")[0] == b"refund"
    with pytest.raises(InferenceServerException) as e:
        tc.infer(f"{name}.support", [texts_input(ASK[:1])], model_version="7", headers=bearer(key))
    assert e.value.status() == "404" and "active version (1)" in e.value.message()


def test_another_tenants_adapter_is_not_found(tc, tenant, client):
    name, _ = tenant
    _, other = new_tenant(client, "oip-other")
    with pytest.raises(InferenceServerException) as e:
        tc.infer(f"{name}.support", [texts_input(ASK[:1])], headers=bearer(other))
    assert e.value.status() == "404"
    # A tenant's key may use the backbones, like /v1/embed.
    assert tc.infer("minilm-l6", [texts_input(["hi"])], headers=bearer(other)).as_numpy("embedding").shape == (1, 384)


def test_unknown_model_is_404(tc):
    for model in ("no-such-model", "a.b.c", "Bad.Name"):
        with pytest.raises(InferenceServerException) as e:
            tc.infer(model, [texts_input(["hi"])], headers=admin())
        assert e.value.status() == "404", model
        assert "<tenant>.<adapter>" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        tc.get_model_metadata("nope", headers=admin())
    assert e.value.status() == "404"


def test_bad_auth_is_401(tc):
    for headers in (None, bearer("graft_nope_nope")):
        with pytest.raises(InferenceServerException) as e:
            tc.infer("minilm-l6", [texts_input(["hi"])], headers=dict(headers) if headers else None)
        assert e.value.status() == "401"
        with pytest.raises(InferenceServerException) as e:
            tc.get_model_metadata("minilm-l6", headers=dict(headers) if headers else None)
        assert e.value.status() == "401"


def test_bad_tensors_are_400(tc):
    fp32 = triton.InferInput("text", [2], "FP32").set_data_from_numpy(np.ones(2, dtype=np.float32))
    wrong_name = triton.InferInput("input_ids", [1], "BYTES").set_data_from_numpy(np.array([b"hi"], dtype=np.object_))
    image_to_text = triton.InferInput("image", [1], "BYTES").set_data_from_numpy(np.array([png(1)], dtype=np.object_))
    cases = [
        ("minilm-l6", [fp32], None, "datatype must be BYTES"),
        ("minilm-l6", [wrong_name], None, "takes the input 'text'"),
        ("minilm-l6", [image_to_text], None, "takes the input 'text'"),
        ("minilm-l6", [texts_input(["hi"])], [triton.InferRequestedOutput("logits")], "unknown output 'logits'"),
        ("minilm-l6", [texts_input(["hi"]), texts_input(["yo"])], None, "one input tensor"),
        ("minilm-l6", [texts_input([])], None, "empty"),
    ]
    for model, inputs, outputs, needle in cases:
        with pytest.raises(InferenceServerException) as e:
            tc.infer(model, inputs, outputs=outputs, headers=admin())
        assert e.value.status() == "400" and needle in e.value.message(), (needle, e.value.message())


def binary_case(size: int, data: bytes, needle: str) -> tuple[dict[str, str], bytes, int, str]:
    """A request in the binary extension: the JSON header, then `data` (a text tensor of one)."""
    header = (b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", '
              b'"parameters": {"binary_data_size": %d}}]}' % size)
    return {"Inference-Header-Content-Length": str(len(header))}, header + data, 400, needle


@pytest.mark.parametrize("headers,body,status,needle", [
    ({}, b"{not json", 400, "JSON"),
    ({}, b'{"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a", "b"]}]}', 400, "holds 3"),
    ({}, b'{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [7]}]}', 400, "element 0"),
    ({}, b'{"inputs": [{"name": "text", "shape": [-1], "datatype": "BYTES", "data": ["a"]}]}', 400, "shape"),
    ({}, b'{"inputs": []}', 400, "one input tensor"),
    ({"Inference-Header-Content-Length": "999"}, b'{"inputs": []}', 400, "Inference-Header-Content-Length"),
    binary_case(9, b"\x05\x00\x00\x00hi", "binary_data_size"),  # says 9 bytes follow; 6 do
    binary_case(6, b"\x05\x00\x00\x00hi", "says 5 bytes"),  # an element longer than the data
    binary_case(6, b"\x02\x00\x00\x00\xff\xfe", "not UTF-8"),
    binary_case(2, b"\x02\x00", "4-byte length"),
    ({}, b'{"inputs": [{"name": "text", "shape": [65], "datatype": "BYTES", "data": ' + b'["x"' + b',"x"' * 64 + b"]}]}",
     413, "GRAFT_MAX_BATCH_ITEMS"),
])
def test_malformed_requests_get_v2_errors(server, headers, body, status, needle):
    r = httpx.post(f"{server.url}/v2/models/minilm-l6/infer", content=body, timeout=60,
                   headers={**bearer(ADMIN_KEY), "content-type": "application/json", **headers})
    assert r.status_code == status, r.text
    error = r.json()
    assert set(error) == {"error"} and isinstance(error["error"], str) and needle in error["error"], error


def test_wrong_method_is_405_in_the_v2_shape(server):
    r = httpx.get(f"{server.url}/v2/models/minilm-l6/infer", headers=bearer(ADMIN_KEY))
    assert r.status_code == 405 and r.headers["allow"] == "POST" and isinstance(r.json()["error"], str)
