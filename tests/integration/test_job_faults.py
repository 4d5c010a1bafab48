"""Fine-tune jobs under faults: a worker killed with -9 mid-job, a service restart, and two
worker processes on one PostgreSQL queue."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from sqlalchemy import create_engine, select

from adapters.jobs import JobQueue, JobRow
from adapters.registry import Registry, normalise_url
from tests.integration.data import split
from tests.integration.jobs import wait_job
from tests.integration.server import ROOT, Server

TRAIN, _ = split()
SLOW = {"epochs": 400, "patience": 400, "batch_size": 1}


def lease_owner_pid(database_url: str, job_id: str) -> int | None:
    engine = create_engine(normalise_url(database_url))
    with engine.connect() as c:
        owner = c.execute(select(JobRow.lease_owner).where(JobRow.id == job_id)).scalar()
    engine.dispose()
    return int(owner.split(":")[1]) if owner else None


def test_kill_9_worker_mid_job_and_restart_the_service(graft_home, tmp_path):
    db = f"sqlite:///{tmp_path}/registry.db"
    env = dict(GRAFT_DATABASE_URL=db, GRAFT_JOB_LEASE_S="2", GRAFT_JOB_POLL_MS="100")
    server = Server(graft_home, tmp_path / "a.log", **env).start()
    try:
        c = server.client()
        c.post("/v1/tenants", json={"tenant": "k9"})
        job = c.post("/v1/finetune", json={"tenant": "k9", "adapter": "a", "examples": TRAIN, "params": SLOW}).json()
        wait_job(c, job["job_id"], ("running",), timeout=60)
        time.sleep(0.5)  # into the epochs
        pid = lease_owner_pid(db, job["job_id"])
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        done = wait_job(c, job["job_id"], timeout=180)
        assert done["status"] in ("succeeded", "failed"), done
        kinds = [e["kind"] for e in c.get(f"/v1/jobs/{job['job_id']}/events").json()["events"]]
        assert "requeued" in kinds or "failed" in kinds
        versions = c.get("/v1/tenants/k9/adapters/a/versions")
        if done["status"] == "succeeded":
            assert done["attempts"] == 2 and len(versions.json()["versions"]) == 1
        else:
            assert versions.status_code == 404  # no half-registered version
        finished = c.post("/v1/finetune", json={"tenant": "k9", "adapter": "b", "examples": TRAIN}).json()
        assert wait_job(c, finished["job_id"])["status"] == "succeeded"
    finally:
        server.stop()

    # A restart keeps jobs and versions.
    server = Server(graft_home, tmp_path / "b.log", **env).start()
    try:
        c = server.client()
        assert c.get(f"/v1/jobs/{finished['job_id']}").json()["status"] == "succeeded"
        assert c.get(f"/v1/jobs/{job['job_id']}").json()["status"] == done["status"]
        r = c.post("/v1/predict", json={"tenant": "k9", "adapter": "b", "inputs": ["a superb film"]})
        assert r.status_code == 200 and r.json()["version"] == 1
    finally:
        server.stop()


def test_two_workers_on_one_postgres_never_run_a_job_twice(graft_home, postgres_database, tmp_path):
    registry = Registry(postgres_database)
    queue = JobQueue(registry)
    registry.create_tenant("pg-jobs")
    env = {**os.environ, "GRAFT_HOME": str(graft_home), "GRAFT_DATABASE_URL": postgres_database,
           "GRAFT_JOB_POLL_MS": "100", "GRAFT_TRAIN_METRICS_PORT": "0"}
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    workers = [
        subprocess.Popen([sys.executable, "-m", "service.worker"], cwd=ROOT, env=env,
                         stdout=log.open("wb"), stderr=subprocess.STDOUT)
        for log in logs
    ]
    try:
        deadline = time.monotonic() + 60  # both polling before any job exists: a fair race
        while not all("polling for jobs" in log.read_text() for log in logs):
            assert time.monotonic() < deadline, [log.read_text()[-2000:] for log in logs]
            time.sleep(0.2)
        params = {"epochs": 40, "patience": 40, "batch_size": 2}
        ids = [queue.submit("pg-jobs", f"a{i}", "minilm-l6", TRAIN, params, max_queued=100).id for i in range(6)]
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            jobs = [queue.get(i) for i in ids]
            if all(j.status in ("succeeded", "failed", "cancelled") for j in jobs):
                break
            time.sleep(0.5)
        assert [j.status for j in jobs] == ["succeeded"] * 6, [(j.status, j.error_message) for j in jobs]
        assert all(j.attempts == 1 for j in jobs)
        starts = [[e for e in queue.events(i) if e["kind"] == "started"] for i in ids]
        assert all(len(s) == 1 for s in starts)
        assert all("worker" not in s[0] for s in starts)  # host:pid stays in the worker logs
        claimed = [sum(f"job {i}: attempt 1 claimed by" in log.read_text() for i in ids) for log in logs]
        assert sum(claimed) == 6 and min(claimed) >= 1, f"jobs claimed per worker: {claimed}"
        for i in range(6):
            assert [v.version for v in registry.list_versions("pg-jobs", f"a{i}")] == [1]
    finally:
        for w in workers:
            w.terminate()
            w.wait(20)
        registry.close()
