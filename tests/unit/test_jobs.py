"""JobQueue on SQLite and PostgreSQL: claim once, leases, expiry, cancel, atomic publish."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from adapters import zero_shot
from adapters.format import encode
from adapters.jobs import JobQueue, LeaseLost, QueueFull
from adapters.registry import NotFoundError, Registry

EXAMPLES = [{"text": t, "label": l} for t, l in [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")]]


@pytest.fixture
def queue(registry_url):
    registry = Registry(registry_url)
    registry.create_tenant("acme")
    yield JobQueue(registry, lease_s=0.5, max_attempts=2)
    registry.close()


def submit(queue, **kw):
    return queue.submit("acme", kw.get("adapter", "a"), "minilm-l6", EXAMPLES, {"epochs": 3}, max_queued=kw.get("max_queued", 10))


def a_version():
    return encode(*zero_shot.build("minilm-l6", "f" * 32, ["x", "y"], np.eye(2, 4)))


def test_submit_get_list_events(queue):
    job = submit(queue)
    assert job.status == "queued" and job.attempts == 0
    assert queue.get(job.id).id == job.id
    with pytest.raises(NotFoundError):
        queue.get(job.id, tenant="other")
    assert [j.id for j in queue.list("acme")] == [job.id]
    assert [e["kind"] for e in queue.events(job.id)] == ["queued"]


def test_bounded_queue(queue):
    submit(queue, max_queued=1)
    with pytest.raises(QueueFull):
        submit(queue, max_queued=1)


def test_each_job_is_claimed_once_under_concurrency(queue):
    jobs = {submit(queue).id for _ in range(8)}
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        q = JobQueue(Registry(queue.registry.url, migrate=False), lease_s=30)
        while (c := q.claim(name)) is not None:
            with lock:
                claimed.append(c.job.id)
        q.registry.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(jobs)


def test_publish_is_atomic_and_needs_the_lease(queue):
    job = submit(queue)
    claim = queue.claim("w1")
    assert queue.heartbeat(claim, 0.5) is False
    version = queue.publish(claim, *a_version(), promote=True, metrics={"macro_f1": 1.0}, decision={"reason": "t"},
                            expected_active=None)
    done = queue.get(job.id)
    assert (done.status, done.version, done.promoted, done.progress) == ("succeeded", version, True, 1.0)
    stored, _ = queue.registry.active("acme", "a")
    assert stored.version == version
    with pytest.raises(LeaseLost):
        queue.publish(claim, *a_version(), promote=True, metrics={}, decision={}, expected_active=None)
    assert len(queue.registry.list_versions("acme", "a")) == 1


def test_a_promote_made_while_a_job_trains_is_not_overridden(queue):
    """The job decided to promote against version 1; meanwhile the user promoted version 2.
    The job's version is stored as a candidate and version 2 keeps serving."""
    registry = queue.registry
    registry.create_adapter("acme", "a", *a_version())
    registry.add_version("acme", "a", *a_version(), activate=False)
    job = submit(queue)
    claim = queue.claim("w1")
    registry.promote("acme", "a", 2)  # while the job trains
    version = queue.publish(claim, *a_version(), promote=True, metrics={"macro_f1": 1.0},
                            decision={"decision": "promote", "reason": "beats v1"}, expected_active=1)
    assert version == 3 and registry.active("acme", "a")[0].version == 2
    done = queue.get(job.id)
    assert done.status == "succeeded" and done.promoted is False
    promotion = [e for e in queue.events(job.id) if e["kind"] == "promotion"][0]
    assert promotion["decision"] == "candidate" and "changed to 2" in promotion["reason"]
    # A rollback meanwhile is kept the same way.
    submit(queue)
    claim = queue.claim("w1")
    registry.rollback("acme", "a")  # back to 1
    queue.publish(claim, *a_version(), promote=True, metrics={}, decision={}, expected_active=2)
    assert registry.active("acme", "a")[0].version == 1


def test_a_delete_made_while_a_job_trains_is_not_revived(queue):
    from adapters.registry import AdapterDeleted

    registry = queue.registry
    registry.create_adapter("acme", "a", *a_version())
    job = submit(queue)
    claim = queue.claim("w1")
    registry.delete_adapter("acme", "a")  # while the job trains
    with pytest.raises(AdapterDeleted):
        queue.publish(claim, *a_version(), promote=True, metrics={}, decision={}, expected_active=1)
    assert [a.adapter for a in registry.list_adapters("acme")] == []
    assert queue.get(job.id).status == "running"  # the worker fails it (adapter_deleted)
    queue.finish(claim, "failed", error_code="adapter_deleted", error_message="deleted")
    # A job for an adapter that did not exist when it started creates it.
    submit(queue)
    claim = queue.claim("w1")
    assert queue.publish(claim, *a_version(), promote=False, metrics={}, decision={}, expected_active=None) == 2
    assert registry.active("acme", "a")[0].version == 2


def test_expired_lease_is_retried_then_failed(queue):
    job = submit(queue)
    first = queue.claim("dead-1")
    time.sleep(0.6)
    second = queue.claim("w2")  # expiry requeues it, then w2 takes it
    assert second is not None and second.job.id == job.id and second.job.attempts == 2
    with pytest.raises(LeaseLost):
        queue.heartbeat(first)  # the dead worker cannot come back and publish
    time.sleep(0.6)
    assert queue.claim("w3") is None
    failed = queue.get(job.id)
    assert failed.status == "failed" and failed.error_code == "worker_lost"
    kinds = [e["kind"] for e in queue.events(job.id)]
    assert kinds == ["queued", "started", "requeued", "started", "failed"]


def test_cancel_queued_and_running(queue):
    queued = submit(queue)
    assert queue.cancel(queued.id).status == "cancelled"
    running = submit(queue)
    claim = queue.claim("w")
    assert queue.cancel(running.id).status == "running"
    assert queue.heartbeat(claim) is True  # the worker sees it and stops
    queue.finish(claim, "cancelled")
    assert queue.get(running.id).status == "cancelled"


def test_embedding_cache(queue):
    vec = np.arange(4, dtype=np.float32).tobytes()
    queue.store_embeddings("fp", {"hello": vec})
    assert queue.cached_embeddings("fp", ["hello", "other"]) == {"hello": vec}
    assert queue.cached_embeddings("other-fp", ["hello"]) == {}


def test_the_maximum_example_count_of_embeddings_is_stored(queue):
    """50,000 examples (GRAFT_MAX_TRAIN_EXAMPLES) in one store: on PostgreSQL one INSERT of
    them all would pass its 65,535 bind parameters."""
    from service.settings import Settings

    n = Settings.model_fields["max_train_examples"].default
    vectors = {f"text {i}": i.to_bytes(4, "little") * 4 for i in range(n)}
    queue.store_embeddings("f" * 32, vectors)
    sample = [f"text {i}" for i in range(0, n, 997)]
    assert queue.cached_embeddings("f" * 32, sample) == {t: vectors[t] for t in sample}


def test_job_events_name_no_host_or_process(queue):
    job = submit(queue)
    queue.claim("host-a:1234")
    started = [e for e in queue.events(job.id) if e["kind"] == "started"][0]
    assert "host-a" not in str(started) and started["attempt"] == 1


def test_leases_follow_the_databases_clock_not_the_workers(queue, monkeypatch):
    """A worker whose clock runs an hour ahead must not expire (and steal) a fresh lease."""
    import datetime as dt

    import adapters.jobs as jobs

    job = submit(queue)
    claim = queue.claim("w1")
    real_now = jobs._now
    monkeypatch.setattr(jobs, "_now", lambda: real_now() + dt.timedelta(hours=1))
    assert queue.claim("skewed") is None  # runs expire() with the skewed clock
    assert queue.get(job.id).status == "running"
    assert queue.heartbeat(claim, 0.5) is False  # still ours


def test_concurrent_submits_cannot_exceed_the_tenant_quota(queue):
    results: list[str] = []
    lock = threading.Lock()

    def submit_one() -> None:
        q = JobQueue(Registry(queue.registry.url, migrate=False))
        try:
            q.submit("acme", "a", "minilm-l6", EXAMPLES, {}, max_queued=100, max_per_tenant=1)
            outcome = "ok"
        except QueueFull:
            outcome = "full"
        with lock:
            results.append(outcome)
        q.registry.close()

    threads = [threading.Thread(target=submit_one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1 and len(queue.list("acme")) == 1, results


def test_a_stale_claim_cannot_finish_a_job_another_worker_holds(queue):
    job = submit(queue)
    first = queue.claim("w1")
    time.sleep(0.6)  # w1's lease expires
    second = queue.claim("w2")
    assert second is not None and second.job.id == job.id
    with pytest.raises(LeaseLost):
        queue.finish(first, "failed", error_code="x")
    with pytest.raises(LeaseLost):
        queue.event(first, "epoch", {})
    assert queue.get(job.id).status == "running"
    queue.finish(second, "cancelled")
    assert queue.get(job.id).status == "cancelled"
