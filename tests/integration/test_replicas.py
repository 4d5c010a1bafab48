"""Two service processes on one PostgreSQL registry: what one changes, the other serves
within 2 s, without a restart."""
from __future__ import annotations

import time

import pytest

from tests.integration.helpers import add_zero_shot_version
from tests.integration.server import Server


@pytest.fixture(scope="module")
def replicas(graft_home, postgres_database, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("replicas")
    servers = [
        Server(graft_home, tmp / f"replica{i}.log", GRAFT_DATABASE_URL=postgres_database) for i in (1, 2)
    ]
    for s in servers:
        s.start()
    yield servers
    for s in servers:
        s.stop()


def wait_for(check, timeout: float) -> float:
    """Seconds until check() holds; fails after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    pytest.fail(f"not within {timeout}s")


def test_promote_on_one_replica_serves_on_the_other_within_2s(replicas):
    one, two = (s.client() for s in replicas)
    assert one.post("/v1/tenants", json={"tenant": "shared"}).status_code == 201
    assert one.post("/v1/adapters", json={"tenant": "shared", "adapter": "a", "labels": ["yes", "no"]}).status_code == 201

    def version_on_two() -> int:
        r = two.post("/v1/predict", json={"tenant": "shared", "adapter": "a", "inputs": ["sure"]})
        return r.json()["version"] if r.status_code == 200 else -r.status_code

    assert version_on_two() == 1  # replica 2 loads it from the shared registry
    v2 = add_zero_shot_version(one, replicas[0].database_url, "shared", "a", ["up", "down"], ["up", "down"])
    assert one.post("/v1/tenants/shared/adapters/a/promote",
                    json={"version": v2, "allow_dropped_labels": True}).status_code == 200
    assert wait_for(lambda: version_on_two() == v2, timeout=2.0) < 2.0

    assert one.post("/v1/tenants/shared/adapters/a/rollback").status_code == 200
    assert wait_for(lambda: version_on_two() == 1, timeout=2.0) < 2.0

    assert one.delete("/v1/tenants/shared/adapters/a").status_code == 200
    assert wait_for(lambda: version_on_two() == -404, timeout=2.0) < 2.0
