"""Tenants and adapters over HTTP against the real server: zero-shot, predict, versions,
promote/rollback/delete, errors, and hot swaps under load."""
from __future__ import annotations

import threading
import time

import pytest

from tests.integration import helpers
from tests.integration.helpers import add_zero_shot_version

LABELS = ["refund", "shipping", "account"]
DESCRIPTIONS = {
    "refund": "I want my money back",
    "shipping": "where is my parcel, delivery is late",
    "account": "I cannot log in to my account",
}
QUERIES = ["please give me my money back", "my package has not arrived yet", "password reset does not work"]


def new_tenant(client) -> str:
    return helpers.new_tenant(client, "t")[0]


def test_zero_shot_adapter_serves_at_once(client):
    tenant = new_tenant(client)
    r = client.post("/v1/adapters", json={"tenant": tenant, "adapter": "support", "labels": LABELS,
                                          "descriptions": DESCRIPTIONS})
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1
    r = client.post("/v1/predict", json={"tenant": tenant, "adapter": "support", "inputs": QUERIES, "top_k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["version"], body["backbone"]) == (1, "minilm-l6")
    assert [p["label"] for p in body["predictions"]] == LABELS
    for p in body["predictions"]:
        assert len(p["top"]) == 3 and abs(sum(t["score"] for t in p["top"]) - 1) < 1e-4
        assert p["top"][0] == {"label": p["label"], "score": p["score"]}


def test_default_adapter_name_and_listing(client):
    tenant = new_tenant(client)
    assert client.post("/v1/adapters", json={"tenant": tenant, "labels": ["yes", "no"]}).status_code == 201
    r = client.post("/v1/predict", json={"tenant": tenant, "inputs": ["absolutely"]})
    assert r.json()["adapter"] == "default"
    listing = client.get(f"/v1/tenants/{tenant}/adapters").json()
    assert listing["adapters"] == [{"adapter": "default", "backbone": "minilm-l6", "active_version": 1, "versions": 1}]
    (v,) = client.get(f"/v1/tenants/{tenant}/adapters/default/versions").json()["versions"]
    assert v["active"] and v["head"] == "linear" and v["labels"] == ["yes", "no"]
    assert v["training"]["method"] == "zero-shot"


def test_promote_rollback_delete(client, server):
    tenant = new_tenant(client)
    client.post("/v1/adapters", json={"tenant": tenant, "adapter": "a", "labels": LABELS})
    v2 = add_zero_shot_version(client, server.database_url, tenant, "a", ["left", "right"], ["left", "right"])
    base = f"/v1/tenants/{tenant}/adapters/a"
    # v2 serves none of v1's labels: promoting it needs saying so (issue 16: label changes are never silent)
    refused = client.post(f"{base}/promote", json={"version": v2})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["details"] == {"version": v2, "active_version": 1, "dropped": LABELS}
    assert "allow_dropped_labels" in refused.json()["error"]["message"]
    r = client.post(f"{base}/promote", json={"version": v2, "allow_dropped_labels": True})
    assert r.json()["active_version"] == v2, r.text
    r = client.post("/v1/predict", json={"tenant": tenant, "adapter": "a", "inputs": ["turn left"]})
    assert (r.json()["version"], r.json()["predictions"][0]["label"]) == (v2, "left")
    assert client.post(f"{base}/rollback").json()["active_version"] == 1
    assert client.post("/v1/predict", json={"tenant": tenant, "adapter": "a", "inputs": ["x"]}).json()["version"] == 1
    assert client.delete(base).json()["deleted"] is True
    r = client.post("/v1/predict", json={"tenant": tenant, "adapter": "a", "inputs": ["x"]})
    assert r.status_code == 404


ERROR_CASES = [
    ("post", "/v1/predict", {"tenant": "no-such-tenant", "inputs": ["x"]}, 404),
    ("post", "/v1/predict", {"tenant": "{t}", "adapter": "missing", "inputs": ["x"]}, 404),
    ("post", "/v1/predict", {"tenant": "{t}", "inputs": []}, 400),
    ("post", "/v1/predict", {"tenant": "{t}", "inputs": ["x"], "top_k": 0}, 400),
    ("post", "/v1/predict", {"tenant": "Upper", "inputs": ["x"]}, 400),
    ("post", "/v1/predict", {"tenant": "../etc", "inputs": ["x"]}, 400),
    ("post", "/v1/adapters", {"tenant": "{t}", "adapter": "x", "labels": []}, 400),
    ("post", "/v1/adapters", {"tenant": "{t}", "adapter": "x", "labels": ["a", "a"]}, 400),
    ("post", "/v1/adapters", {"tenant": "{t}", "adapter": "x", "labels": ["a", ""]}, 400),
    ("post", "/v1/adapters", {"tenant": "{t}", "adapter": "x", "labels": ["a", "b"], "backbone": "nope"}, 404),
    ("post", "/v1/adapters", {"tenant": "{t}", "adapter": "default", "labels": ["a", "b"]}, 409),
    ("post", "/v1/adapters", {"tenant": "ghost", "adapter": "x", "labels": ["a", "b"]}, 404),
    ("post", "/v1/tenants", {"tenant": "{t}"}, 409),
    ("post", "/v1/tenants", {"tenant": "-bad"}, 400),
    ("get", "/v1/tenants/ghost/adapters", None, 404),
    ("get", "/v1/tenants/{t}/adapters/missing/versions", None, 404),
    ("post", "/v1/tenants/{t}/adapters/default/promote", {"version": 99}, 404),
    ("post", "/v1/tenants/{t}/adapters/default/promote", {"version": "2"}, 400),
    ("post", "/v1/tenants/{t}/adapters/default/rollback", None, 409),
    ("delete", "/v1/tenants/{t}/adapters/missing", None, 404),
    ("delete", "/v1/tenants/BAD/adapters/x", None, 400),
]


@pytest.fixture(scope="module")
def tenant_with_default(client):
    tenant = new_tenant(client)
    client.post("/v1/adapters", json={"tenant": tenant, "labels": ["a", "b"]})
    return tenant


@pytest.mark.parametrize("method,path,body,status", ERROR_CASES)
def test_errors(client, tenant_with_default, method, path, body, status):
    fill = lambda v: v.replace("{t}", tenant_with_default) if isinstance(v, str) else v  # noqa: E731
    payload = {k: fill(v) for k, v in body.items()} if body else None
    r = client.request(method.upper(), fill(path), json=payload)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_hot_swaps_under_load_never_fail_a_request(client, server):
    """A client hammers /v1/predict while versions are promoted and rolled back 50 times."""
    tenant = new_tenant(client)
    client.post("/v1/adapters", json={"tenant": tenant, "adapter": "hot", "labels": LABELS, "descriptions": DESCRIPTIONS})
    label_sets = {1: LABELS}
    for labels in (["north", "south"], ["cat", "dog", "bird", "fish"]):
        v = add_zero_shot_version(client, server.database_url, tenant, "hot", labels, labels)
        label_sets[v] = labels
    stop = threading.Event()
    seen: dict[int, int] = {}
    problems: list[str] = []

    def hammer() -> None:
        with server.client() as c:
            while not stop.is_set():
                r = c.post("/v1/predict", json={"tenant": tenant, "adapter": "hot", "inputs": QUERIES})
                if r.status_code != 200:
                    problems.append(f"{r.status_code}: {r.text}")
                    continue
                body = r.json()
                seen[body["version"]] = seen.get(body["version"], 0) + 1
                if any(p["label"] not in label_sets.get(body["version"], []) for p in body["predictions"]):
                    problems.append(f"labels of another version in v{body['version']}: {body}")

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    base = f"/v1/tenants/{tenant}/adapters/hot"
    versions = sorted(label_sets)
    for i in range(50):
        if i % 3 == 2:
            r = client.post(f"{base}/rollback")
        else:
            r = client.post(f"{base}/promote", json={"version": versions[i % len(versions)], "allow_dropped_labels": True})
        assert r.status_code in (200, 409), r.text
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join()
    assert problems == []
    assert set(seen) <= set(versions) and len(seen) >= 2, seen
    active = next(v["version"] for v in client.get(f"{base}/versions").json()["versions"] if v["active"])
    assert client.post("/v1/predict", json={"tenant": tenant, "adapter": "hot", "inputs": ["x"]}).json()["version"] == active
