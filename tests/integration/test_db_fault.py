"""PostgreSQL goes away mid-traffic and comes back: resident adapters keep serving with
zero failed predictions, /readyz says degraded, writes answer 503 and then succeed."""
from __future__ import annotations

import threading
import time

import pytest

from tests.integration.server import Server
from tests.integration.tcp_proxy import TcpProxy


@pytest.fixture
def proxied_db(postgres_database):
    proxy = TcpProxy(("127.0.0.1", 5432)).start()
    url = postgres_database.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    yield proxy, url
    proxy.stop()


def test_database_outage_mid_traffic(graft_home, proxied_db, tmp_path):
    proxy, url = proxied_db
    srv = Server(graft_home, tmp_path / "s.log", GRAFT_DATABASE_URL=url, GRAFT_TRAIN_WORKERS="0",
                 GRAFT_KEY_CACHE_S="1", GRAFT_REGISTRY_POLL_MS="200", GRAFT_RATE_LIMIT_RPS="0").start()
    try:
        admin = srv.client()
        key = admin.post("/v1/tenants", json={"tenant": "outage"}).json()["api_key"]
        tenant = srv.client(key)
        assert tenant.post("/v1/adapters", json={"tenant": "outage", "labels": ["up", "down"]}).status_code == 201
        assert tenant.post("/v1/predict", json={"tenant": "outage", "inputs": ["warm"]}).status_code == 200

        stop, results = threading.Event(), []

        def hammer() -> None:
            with srv.client(key, timeout=30) as c:
                while not stop.is_set():
                    r = c.post("/v1/predict", json={"tenant": "outage", "inputs": ["going up", "going down"]})
                    results.append(r.status_code)

        thread = threading.Thread(target=hammer)
        thread.start()
        time.sleep(0.5)
        proxy.stop()  # the database is gone
        time.sleep(1.5)  # past the key cache (1 s): keys now come from the stale cache
        deadline = time.monotonic() + 10
        while (ready := admin.get("/readyz")).json()["status"] != "degraded":
            assert time.monotonic() < deadline, ready.text
            time.sleep(0.2)
        assert ready.status_code == 200
        write = admin.post("/v1/adapters", json={"tenant": "outage", "adapter": "new", "labels": ["a", "b"]})
        assert write.status_code == 503, write.text
        during = len(results)

        proxy.start()  # and back
        deadline = time.monotonic() + 20
        while admin.get("/readyz").json()["status"] != "ready":
            assert time.monotonic() < deadline, "the registry never came back"
            time.sleep(0.2)
        write = admin.post("/v1/adapters", json={"tenant": "outage", "adapter": "new", "labels": ["a", "b"]})
        assert write.status_code == 201, write.text
        time.sleep(0.5)
        stop.set()
        thread.join()
        assert during > 10 and set(results) == {200}, {code: results.count(code) for code in set(results)}
    finally:
        srv.stop()
