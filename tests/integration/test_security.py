"""Tenant isolation, keys and limits over real HTTP and gRPC.

Tenant A tries every endpoint on tenant B's adapters and jobs and sees nothing: 404, the
same answer as for things that do not exist.
"""
from __future__ import annotations

import os
import stat
import time
import uuid

import grpc
import numpy as np
import pytest
from sqlalchemy import create_engine, update

from adapters.registry import VersionRow, normalise_url
from service.proto.graft.v1 import graft_pb2 as pb
from service.proto.graft.v1 import graft_pb2_grpc as pb_grpc
from tests.integration.data import split
from tests.integration.helpers import add_zero_shot_version, new_tenant
from tests.integration.jobs import wait_job
from tests.integration.server import Server

TRAIN, _ = split()


@pytest.fixture(scope="module")
def admin(server):
    with server.client() as c:
        yield c


def make_tenant(admin) -> tuple[str, str]:
    name, key = new_tenant(admin, "s")
    assert key.startswith("graft_")
    return name, key


@pytest.fixture(scope="module")
def two_tenants(server, admin):
    (a, key_a), (b, key_b) = make_tenant(admin), make_tenant(admin)
    with server.client(key_b) as cb:
        assert cb.post("/v1/adapters", json={"tenant": b, "adapter": "secret", "labels": ["x", "y"]}).status_code == 201
        job = cb.post("/v1/finetune", json={"tenant": b, "adapter": "trained", "examples": TRAIN,
                                            "params": {"epochs": 5}}).json()
        wait_job(cb, job["job_id"])
    return {"a": (a, key_a), "b": (b, key_b), "b_job": job["job_id"]}


def test_requests_without_a_valid_key_are_401(server, two_tenants):
    for key in (None, "wrong", "graft_deadbeef_nottherightsecret", "Bearer"):
        with server.client(key) as c:
            r = c.post("/v1/embed", json={"inputs": ["x"]})
            assert r.status_code == 401, (key, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
    with server.client() as admin:  # a request naming a tenant, to see how /metrics labels it
        assert admin.get(f"/v1/tenants/{two_tenants['a'][0]}/adapters").status_code == 200
    with server.client(None) as c:  # the open endpoints
        assert c.get("/livez").status_code == 200
        assert c.get("/readyz").status_code == 200
        metrics = c.get("/metrics")
        assert metrics.status_code == 200
        for name in (two_tenants["a"][0], two_tenants["b"][0], two_tenants["b_job"]):
            assert name not in metrics.text  # route templates only: /v1/tenants/{tenant}/...
        assert "/v1/tenants/{tenant}/adapters" in metrics.text


def test_tenant_a_cannot_see_or_touch_tenant_b(server, two_tenants):
    a, key_a = two_tenants["a"]
    b, _ = two_tenants["b"]
    job = two_tenants["b_job"]
    attempts = [
        ("POST", "/v1/predict", {"tenant": b, "adapter": "secret", "inputs": ["x"]}),
        ("POST", "/v1/adapters", {"tenant": b, "adapter": "mine", "labels": ["p", "q"]}),
        ("GET", f"/v1/tenants/{b}/adapters", None),
        ("GET", f"/v1/tenants/{b}/adapters/secret/versions", None),
        ("POST", f"/v1/tenants/{b}/adapters/secret/promote", {"version": 1}),
        ("POST", f"/v1/tenants/{b}/adapters/secret/rollback", None),
        ("DELETE", f"/v1/tenants/{b}/adapters/secret", None),
        ("POST", "/v1/finetune", {"tenant": b, "adapter": "x", "examples": TRAIN}),
        ("GET", f"/v1/jobs/{job}", None),
        ("GET", f"/v1/jobs/{job}/events", None),
        ("POST", f"/v1/jobs/{job}/cancel", None),
        ("GET", f"/v1/tenants/{b}/jobs", None),
    ]
    # Admin-only routes (public in the OpenAPI description): 403, "needs the admin key", for
    # the tenant's own name as for another's.
    admin_only = [
        ("POST", "/v1/tenants", {"tenant": f"x-{uuid.uuid4().hex[:6]}"}),
        ("POST", f"/v1/tenants/{a}/keys", None),
        ("GET", f"/v1/tenants/{a}/keys", None),
        ("GET", f"/v1/tenants/{b}/keys", None),
        ("DELETE", f"/v1/tenants/{a}/keys/0123456789ab", None),
        ("DELETE", f"/v1/tenants/{b}", None),
    ]
    with server.client(key_a) as ca:
        for method, path, body in attempts:
            r = ca.request(method, path, json=body)
            assert r.status_code == 404, (method, path, r.status_code, r.text)
        for method, path, body in admin_only:
            r = ca.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert r.json()["error"]["code"] == "forbidden", r.text
            assert "needs the admin key" in r.json()["error"]["message"], r.text
        # ...and B's things are all still there, untouched.
    with server.client() as admin:
        assert admin.post("/v1/predict", json={"tenant": b, "adapter": "secret", "inputs": ["x"]}).status_code == 200
        assert [x["adapter"] for x in admin.get(f"/v1/tenants/{b}/adapters").json()["adapters"]] == ["secret", "trained"]


def test_tenant_a_over_grpc(server, two_tenants):
    a, key_a = two_tenants["a"]
    b, _ = two_tenants["b"]
    stub = pb_grpc.GraftStub(server.channel(key_a))
    calls = [
        lambda: stub.Predict(pb.PredictRequest(tenant=b, adapter="secret", inputs=["x"])),
        lambda: stub.ListAdapters(pb.ListAdaptersRequest(tenant=b)),
        lambda: stub.Promote(pb.PromoteRequest(tenant=b, adapter="secret", version=1)),
        lambda: stub.FineTune(pb.FineTuneRequest(tenant=b, examples=[pb.Example(text=e["text"], label=e["label"]) for e in TRAIN])),
        lambda: stub.GetJob(pb.GetJobRequest(job_id=two_tenants["b_job"])),
        lambda: stub.CancelJob(pb.CancelJobRequest(job_id=two_tenants["b_job"])),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    for key in (None, "wrong"):
        with pytest.raises(grpc.RpcError) as e:
            pb_grpc.GraftStub(server.channel(key)).Embed(pb.EmbedRequest(inputs=["x"]))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # A's own key works for A.
    pb_grpc.GraftStub(server.channel(key_a)).ListAdapters(pb.ListAdaptersRequest(tenant=a))


def test_key_rotation_and_revocation(server, admin):
    tenant, first = make_tenant(admin)
    issued = admin.post(f"/v1/tenants/{tenant}/keys").json()
    with server.client(issued["api_key"]) as c:
        assert c.get(f"/v1/tenants/{tenant}/adapters").status_code == 200
    old_id = first.split("_")[1]
    keys = admin.delete(f"/v1/tenants/{tenant}/keys/{old_id}").json()["keys"]
    assert {k["key_id"]: k["revoked"] for k in keys} == {old_id: True, issued["key_id"]: False}
    time.sleep(5.5)  # GRAFT_KEY_CACHE_S: every replica stops trusting a cached key by then
    with server.client(first) as c:
        assert c.get(f"/v1/tenants/{tenant}/adapters").status_code == 401
    with server.client(issued["api_key"]) as c:
        assert c.get(f"/v1/tenants/{tenant}/adapters").status_code == 200


@pytest.mark.parametrize("name", ["UPPER", "-lead", "a" * 64, "sp ace", "../x", "dot.dot", "ünï"])
def test_names_outside_the_pattern_are_400(admin, name):
    assert admin.post("/v1/tenants", json={"tenant": name}).status_code == 400
    assert admin.post("/v1/predict", json={"tenant": name, "inputs": ["x"]}).status_code == 400


def test_tampered_version_is_refused_and_the_previous_keeps_serving(server, admin):
    tenant, key = make_tenant(admin)
    admin.post("/v1/adapters", json={"tenant": tenant, "adapter": "t", "labels": ["yes", "no"]})
    v2 = add_zero_shot_version(admin, server.database_url, tenant, "t", ["up", "down"], ["up", "down"])
    engine = create_engine(normalise_url(server.database_url))
    with engine.begin() as c:
        c.execute(update(VersionRow).where(VersionRow.tenant_id == tenant, VersionRow.version == v2)
                  .values(weights=b"tampered"))
    engine.dispose()
    with server.client(key) as c:
        assert c.post("/v1/predict", json={"tenant": tenant, "adapter": "t", "inputs": ["x"]}).json()["version"] == 1
        assert c.post(f"/v1/tenants/{tenant}/adapters/t/promote",
                      json={"version": v2, "allow_dropped_labels": True}).status_code == 200
        for _ in range(3):
            r = c.post("/v1/predict", json={"tenant": tenant, "adapter": "t", "inputs": ["x"]})
            assert r.status_code == 200 and r.json()["version"] == 1
        stub = pb_grpc.GraftStub(server.channel(key))
        assert stub.Predict(pb.PredictRequest(tenant=tenant, adapter="t", inputs=["x"])).version == 1
    failures = [l for l in admin.get("/metrics").text.splitlines() if l.startswith("graft_adapter_load_failures_total")]
    assert failures and float(failures[0].split()[-1]) >= 1


def test_a_consistently_forged_version_is_refused(server, admin):
    """Someone with database access rewrites a version's weights and its checksum together:
    the checksum agrees, the signature (keyed by GRAFT_SIGNING_KEY, never in the database)
    does not, so the version is refused and the previous one keeps serving."""
    from adapters import zero_shot
    from adapters.format import encode

    tenant, key = make_tenant(admin)
    admin.post("/v1/adapters", json={"tenant": tenant, "adapter": "f", "labels": ["yes", "no"]})
    v2 = add_zero_shot_version(admin, server.database_url, tenant, "f", ["up", "down"], ["up", "down"])
    ready = admin.get("/readyz").json()["backbones"][0]
    forged_config, forged_weights = encode(*zero_shot.build(
        ready["id"], ready["fingerprint"], ["up", "down"], np.eye(2, ready["dim"], dtype=np.float32)))
    engine = create_engine(normalise_url(server.database_url))
    with engine.begin() as c:
        c.execute(update(VersionRow).where(VersionRow.tenant_id == tenant, VersionRow.version == v2).values(
            config=forged_config.to_json().decode(), weights=forged_weights, sha256=forged_config.weights_sha256))
    engine.dispose()
    with server.client(key) as c:
        assert c.post(f"/v1/tenants/{tenant}/adapters/f/promote",
                      json={"version": v2, "allow_dropped_labels": True}).status_code == 200
        for _ in range(3):
            r = c.post("/v1/predict", json={"tenant": tenant, "adapter": "f", "inputs": ["x"]})
            assert r.status_code == 200 and r.json()["version"] == 1


def test_limits(graft_home, tmp_path):
    """Rate limit (429 + Retry-After), adapters per tenant, jobs per tenant, body size."""
    srv = Server(graft_home, tmp_path / "s.log", GRAFT_DATABASE_URL=f"sqlite:///{tmp_path}/r.db",
                 GRAFT_RATE_LIMIT_RPS="2", GRAFT_RATE_LIMIT_BURST="3", GRAFT_MAX_ADAPTERS_PER_TENANT="2",
                 GRAFT_MAX_TENANT_JOBS="1", GRAFT_MAX_BODY_MB="0.01", GRAFT_TRAIN_WORKERS="0",
                 GRAFT_MAX_TRAIN_EXAMPLES="10", GRAFT_MAX_TEXT_CHARS="100").start()
    try:
        admin = srv.client()
        tenant, key = make_tenant(admin)
        c = srv.client(key)
        codes = [c.post("/v1/embed", json={"inputs": ["x"]}).status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
        limited = next(r for r in (c.post("/v1/embed", json={"inputs": ["x"]}) for _ in range(3)) if r.status_code == 429)
        assert int(limited.headers["retry-after"]) >= 1 and limited.json()["error"]["code"] == "rate_limited"
        stub = pb_grpc.GraftStub(srv.channel(key))
        with pytest.raises(grpc.RpcError) as e:
            for _ in range(6):
                stub.Embed(pb.EmbedRequest(inputs=["x"]))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert admin.post("/v1/embed", json={"inputs": ["x"]}).status_code == 200  # the admin is not limited

        for i in range(2):
            assert admin.post("/v1/adapters", json={"tenant": tenant, "adapter": f"a{i}", "labels": ["p", "q"]}).status_code == 201
        r = admin.post("/v1/adapters", json={"tenant": tenant, "adapter": "a3", "labels": ["p", "q"]})
        assert r.status_code == 429 and "GRAFT_MAX_ADAPTERS_PER_TENANT" in r.json()["error"]["message"]

        small = TRAIN[:2] + TRAIN[10:12]
        assert admin.post("/v1/finetune", json={"tenant": tenant, "adapter": "a0", "examples": small}).status_code == 202
        r = admin.post("/v1/finetune", json={"tenant": tenant, "adapter": "a1", "examples": small})
        assert r.status_code == 429 and "GRAFT_MAX_TENANT_JOBS" in r.json()["error"]["message"]

        r = admin.post("/v1/embed", json={"inputs": ["x" * 20_000]})
        assert r.status_code == 413 and "GRAFT_MAX_BODY_MB" in r.json()["error"]["message"]
        r = admin.post("/v1/embed", json={"inputs": ["y" * 101]})
        assert r.status_code == 413 and "GRAFT_MAX_TEXT_CHARS" in r.json()["error"]["message"]
        r = admin.post("/v1/finetune", json={"tenant": tenant, "adapter": "a1", "examples": TRAIN[:12]})
        assert r.status_code == 413 and "GRAFT_MAX_TRAIN_EXAMPLES" in r.json()["error"]["message"]
    finally:
        srv.stop()


def test_generated_admin_key_is_private_and_not_logged(graft_home, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    os.symlink(graft_home / "backbones", home / "backbones")
    srv = Server(home, tmp_path / "s.log", GRAFT_ADMIN_KEY="", GRAFT_DATABASE_URL=f"sqlite:///{tmp_path}/r.db",
                 GRAFT_TRAIN_WORKERS="0")
    srv.env.pop("GRAFT_ADMIN_KEY")
    srv.env.pop("GRAFT_SIGNING_KEY")
    srv.start()
    try:
        path = home / "admin.key"
        key = path.read_text().strip()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        signing = home / "signing.key"
        assert stat.S_IMODE(signing.stat().st_mode) == 0o600 and len(signing.read_text().strip()) >= 32
        log = srv.log_path.read_text()
        assert str(path) in log and key not in log
        assert srv.client(key).post("/v1/tenants", json={"tenant": "by-generated-key"}).status_code == 201
    finally:
        srv.stop()


def test_a_short_admin_key_stops_the_server(graft_home, tmp_path):
    """A guessable admin key is refused at start: the process exits and never serves."""
    srv = Server(graft_home, tmp_path / "s.log", GRAFT_ADMIN_KEY="not-long-enough",
                 GRAFT_DATABASE_URL=f"sqlite:///{tmp_path}/r.db", GRAFT_TRAIN_WORKERS="0")
    try:
        with pytest.raises(RuntimeError, match="server exited"):
            srv.start(timeout=120, ready=False)
        assert "at least 32" in srv.log_path.read_text()
    finally:
        srv.stop()


def test_blank_bearer_tokens_are_401(server):
    for header in ("Bearer \u00a0", "Bearer \x85", "Bearer \u00a0\x85"):  # NBSP, NEL (latin-1 bytes)
        with server.client(None) as c:
            r = c.post("/v1/embed", json={"inputs": ["x"]}, headers={"authorization": header.encode("latin-1")})
            assert r.status_code == 401 and "empty" in r.text, (header, r.text)


def test_rate_limit_holds_per_tenant_across_two_workers_with_redis(graft_home, tmp_path):
    """GRAFT_WORKERS=2 and GRAFT_REDIS_URL: the tenant's burst is spent once across both
    worker processes, not once per process; a request is charged its items."""
    import os

    import redis

    url = os.environ.get("GRAFT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"Redis unreachable: {e}")
    srv = Server(graft_home, tmp_path / "s.log", GRAFT_DATABASE_URL=f"sqlite:///{tmp_path}/r.db",
                 GRAFT_WORKERS="2", GRAFT_REDIS_URL=url, GRAFT_BACKBONES='["minilm-l6"]',
                 GRAFT_RATE_LIMIT_RPS="0.01", GRAFT_RATE_LIMIT_BURST="6", GRAFT_TRAIN_WORKERS="0").start()
    try:
        # /readyz answered from one worker; wait until both serve (the admin is not rate limited):
        # 12 consecutive answers on new connections, spread by the kernel over both workers.
        deadline, streak = time.monotonic() + 120, 0
        while streak < 12:
            assert time.monotonic() < deadline, "the second worker never became ready"
            with srv.client() as admin:
                ok = admin.post("/v1/embed", json={"inputs": ["warm"]}).status_code == 200
            streak = streak + 1 if ok else 0
            if not ok:
                time.sleep(0.5)
        with srv.client() as admin:
            tenant = f"rl-{uuid.uuid4().hex[:8]}"
            key = admin.post("/v1/tenants", json={"tenant": tenant}).json()["api_key"]
        codes, loading = [], 0
        while len(codes) < 30:  # new connections: the kernel spreads them over both workers
            with srv.client(key) as c:
                r = c.post("/v1/embed", json={"inputs": ["x"]})
            code = r.status_code
            if code == 503:  # a worker the warm-up never reached is still loading: not charged
                assert "still loading" in r.text, r.text
                loading += 1
                assert loading < 100 and time.monotonic() < deadline + 60, codes
                time.sleep(0.2)
                continue
            codes.append(code)
        assert codes.count(200) == 6 and codes.count(429) == 24, codes
        with srv.client() as admin:  # a request is charged its items: 4 + 4 > 6
            other = admin.post("/v1/tenants", json={"tenant": f"{tenant}-b"}).json()["api_key"]
        with srv.client(other) as c:
            assert c.post("/v1/embed", json={"inputs": ["a"] * 4}).status_code == 200
            assert c.post("/v1/embed", json={"inputs": ["a"] * 4}).status_code == 429
    finally:
        srv.stop()


def test_an_expiring_key_stops_working_when_it_expires(server, admin):
    """Even inside the key cache's window (GRAFT_KEY_CACHE_S): expiry is checked on every use."""
    tenant, _ = make_tenant(admin)
    r = admin.post(f"/v1/tenants/{tenant}/keys", json={"expires_in_s": 1.5})
    assert r.status_code == 201 and r.json()["expires_at"]
    key = r.json()["api_key"]
    with server.client(key) as c:
        assert c.get(f"/v1/tenants/{tenant}/adapters").status_code == 200
        time.sleep(2.0)
        r = c.get(f"/v1/tenants/{tenant}/adapters")
        assert r.status_code == 401 and "expired" in r.json()["error"]["message"]
    listed = {k["key_id"]: k for k in admin.get(f"/v1/tenants/{tenant}/keys").json()["keys"]}
    assert sum(1 for k in listed.values() if k["expires_at"]) == 1
    assert admin.post(f"/v1/tenants/{tenant}/keys", json={"expires_in_s": 0}).status_code == 400
    assert admin.post(f"/v1/tenants/{tenant}/keys").status_code == 201  # no body: valid until revoked


def _rows_of(database_url: str, tenant: str) -> dict[str, int]:
    """Rows anywhere in the registry database that belong to `tenant`."""
    from sqlalchemy import text

    engine = create_engine(normalise_url(database_url))
    counts = {}
    with engine.connect() as c:
        for table in ("tenants", "api_keys", "adapters", "adapter_versions", "jobs", "job_examples",
                      "embedding_cache", "hidden_state_cache"):
            column = "id" if table == "tenants" else "tenant_id"
            counts[table] = c.execute(text(f"SELECT count(*) FROM {table} WHERE {column} = :t"), {"t": tenant}).scalar()
        counts["job_events"] = c.execute(text(
            "SELECT count(*) FROM job_events WHERE job_id IN (SELECT id FROM jobs WHERE tenant_id = :t)"),
            {"t": tenant}).scalar()
    engine.dispose()
    return counts


def test_deleting_a_tenant_erases_everything_it_had(server, admin):
    """#14.3: DELETE /v1/tenants/{tenant} revokes its keys, deletes its adapters, versions,
    jobs, examples, events and cached vectors, says what it removed, and touches no one else."""
    tenant, key = make_tenant(admin)
    other, other_key = make_tenant(admin)
    with server.client(key) as c:
        assert c.post("/v1/adapters", json={"tenant": tenant, "adapter": "zs", "labels": ["x", "y"]}).status_code == 201
        job = c.post("/v1/finetune", json={"tenant": tenant, "adapter": "trained", "examples": TRAIN,
                                           "params": {"epochs": 3, "keep_examples": True}}).json()
        assert wait_job(c, job["job_id"])["status"] == "succeeded"
        assert c.post("/v1/predict", json={"tenant": tenant, "adapter": "trained", "inputs": ["x"]}).status_code == 200
    with server.client(other_key) as c:
        assert c.post("/v1/adapters", json={"tenant": other, "adapter": "zs", "labels": ["x", "y"]}).status_code == 201
    before = _rows_of(server.database_url, tenant)
    # Something of each kind to erase (hidden states: when auto tried a deep candidate).
    assert all(n for table, n in before.items() if table != "hidden_state_cache"), before
    other_before = _rows_of(server.database_url, other)

    with server.client(key) as c:  # a tenant cannot erase itself, nor anyone (admin routes: 403)
        assert c.delete(f"/v1/tenants/{tenant}").status_code == 403
    r = admin.delete(f"/v1/tenants/{tenant}")
    assert r.status_code == 200, r.text
    removed = r.json()["removed"]
    assert removed == {"keys": before["api_keys"], "adapters": 2, "versions": before["adapter_versions"],
                       "jobs": before["jobs"], "job_examples": 1, "job_events": before["job_events"],
                       "cached_vectors": before["embedding_cache"],
                       "cached_hidden_states": before["hidden_state_cache"]}
    assert not any(_rows_of(server.database_url, tenant).values())
    assert _rows_of(server.database_url, other) == other_before

    assert admin.post("/v1/predict", json={"tenant": tenant, "adapter": "trained", "inputs": ["x"]}).status_code == 404
    assert admin.get(f"/v1/jobs/{job['job_id']}").status_code == 404
    assert admin.get(f"/v1/tenants/{tenant}/adapters").status_code == 404
    assert admin.delete(f"/v1/tenants/{tenant}").status_code == 404
    time.sleep(5.5)  # GRAFT_KEY_CACHE_S (this process forgot the key at once; other workers within this)
    with server.client(key) as c:
        assert c.get(f"/v1/tenants/{tenant}/adapters").status_code == 401
    with server.client(other_key) as c:
        assert c.post("/v1/predict", json={"tenant": other, "adapter": "zs", "inputs": ["x"]}).status_code == 200
    # The name is free again, with nothing of the old tenant in it.
    assert admin.post("/v1/tenants", json={"tenant": tenant}).status_code == 201
    assert admin.get(f"/v1/tenants/{tenant}/adapters").json()["adapters"] == []


def test_deleting_a_tenant_over_grpc(server, admin):
    tenant, key = make_tenant(admin)
    admin.post("/v1/adapters", json={"tenant": tenant, "adapter": "zs", "labels": ["x", "y"]})
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.GraftStub(server.channel(key)).DeleteTenant(pb.DeleteTenantRequest(tenant=tenant))
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "needs the admin key" in e.value.details()
    out = pb_grpc.GraftStub(server.channel()).DeleteTenant(pb.DeleteTenantRequest(tenant=tenant))
    assert out.tenant == tenant and out.removed["adapters"] == 1 and out.removed["keys"] == 1
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.GraftStub(server.channel()).DeleteTenant(pb.DeleteTenantRequest(tenant=tenant))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
