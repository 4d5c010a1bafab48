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
    version = queue.publish(claim, *a_version(), promote=True, metrics={"macro_f1": 1.0}, decision={"reason": "t"})
    done = queue.get(job.id)
    assert (done.status, done.version, done.promoted, done.progress) == ("succeeded", version, True, 1.0)
    stored, _ = queue.registry.active("acme", "a")
    assert stored.version == version
    with pytest.raises(LeaseLost):
        queue.publish(claim, *a_version(), promote=True, metrics={}, decision={})
    assert len(queue.registry.list_versions("acme", "a")) == 1


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
