"""JobQueue on SQLite and PostgreSQL: claim once, leases, expiry, cancel, atomic publish."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from adapters import zero_shot
from adapters.format import encode
from adapters.jobs import JobQueue, LeaseLost, QueueFull, text_key
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
    queue.store_embeddings("acme", "fp", {"hello": vec})
    assert queue.cached_embeddings("acme", "fp", ["hello", "other"]) == {"hello": vec}
    assert queue.cached_embeddings("acme", "other-fp", ["hello"]) == {}


def test_the_embedding_cache_is_per_tenant(queue):
    """#14.3: a vector one tenant's job computed is never a hit for another tenant (a hit is
    faster, so a shared cache told tenants what others trained on)."""
    vec = np.arange(4, dtype=np.float32).tobytes()
    queue.embedding_cache("acme").store_embeddings("fp", {"a secret text": vec})
    assert queue.embedding_cache("acme").cached_embeddings("fp", ["a secret text"]) == {"a secret text": vec}
    assert queue.embedding_cache("globex").cached_embeddings("fp", ["a secret text"]) == {}


def test_hidden_state_cache(queue):
    """Deep adapters' hidden states: (token count, float16 bytes) per tenant, per hidden key
    (fingerprint, split, lower graph file and precision), per text."""
    states = np.arange(3 * 4, dtype=np.float16).reshape(3, 4)
    key = "f" * 32 + ":s4:lower-s4-v1:fp32"
    queue.embedding_cache("acme").store_hidden_states(key, {"hello": (3, states.tobytes())})
    found = queue.embedding_cache("acme").cached_hidden_states(key, ["hello", "other"])
    assert list(found) == ["hello"] and found["hello"][0] == 3
    assert np.array_equal(np.frombuffer(found["hello"][1], dtype=np.float16).reshape(3, -1), states)
    for other in ("f" * 32 + ":s3:lower-s3-v1:fp32", "f" * 32 + ":s4:lower-s4-v1:int8", "e" * 32 + ":s4:lower-s4-v1:fp32"):
        assert queue.cached_hidden_states("acme", other, ["hello"]) == {}
    assert queue.embedding_cache("globex").cached_hidden_states(key, ["hello"]) == {}  # per tenant
    # A second store of the same text (another worker meanwhile) keeps the first row.
    queue.store_hidden_states("acme", key, {"hello": (1, b"xx"), "new": (1, b"yy")})
    assert queue.cached_hidden_states("acme", key, ["hello", "new"]) == {"hello": (3, states.tobytes()),
                                                                         "new": (1, b"yy")}


def test_retention_sweeps_old_hidden_states(queue):
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from adapters.jobs import HiddenStateRow

    queue.store_hidden_states("acme", "k", {"old": (1, b"12"), "new": (1, b"34")})
    with queue.session.begin() as s:
        s.execute(update(HiddenStateRow).where(HiddenStateRow.text_sha256 == text_key("old"))
                  .values(created_at=datetime.now(timezone.utc) - timedelta(days=40)))
    assert queue.sweep(embeddings_days=0, kept_examples_days=0)["cached_hidden_states"] == 0  # 0: kept forever
    assert queue.sweep(embeddings_days=30, kept_examples_days=90)["cached_hidden_states"] == 1
    assert queue.cached_hidden_states("acme", "k", ["old", "new"]) == {"new": (1, b"34")}


def test_retention_sweeps_old_vectors_and_kept_examples(queue):
    from datetime import datetime, timedelta, timezone

    from sqlalchemy import update

    from adapters.jobs import EmbeddingRow, JobExamplesRow, JobRow

    queue.store_embeddings("acme", "fp", {"old": b"1234", "new": b"5678"})
    kept = queue.submit("acme", "a", "minilm-l6", EXAMPLES, {"keep_examples": True}, max_queued=10)
    queue.finish(queue.claim("w"), "failed", error_code="x")
    with queue.session.begin() as s:
        s.execute(update(EmbeddingRow).where(EmbeddingRow.text_sha256 == text_key("old"))
                  .values(created_at=datetime.now(timezone.utc) - timedelta(days=40)))
        s.execute(update(JobRow).where(JobRow.id == kept.id)
                  .values(finished_at=datetime.now(timezone.utc) - timedelta(days=100)))
    assert queue.sweep(embeddings_days=30, kept_examples_days=90) == {"cached_vectors": 1, "cached_hidden_states": 0,
                                                                      "kept_examples": 1}
    assert queue.cached_embeddings("acme", "fp", ["old", "new"]) == {"new": b"5678"}
    with queue.session() as s:
        assert s.get(JobExamplesRow, kept.id) is None
    assert queue.get(kept.id).status == "failed"  # the job's record stays; only its data goes
    assert queue.sweep(embeddings_days=0, kept_examples_days=0) == {"cached_vectors": 0, "cached_hidden_states": 0,
                                                                    "kept_examples": 0}


def test_examples_are_deleted_when_the_job_ends_unless_kept(queue):
    """#14.3: the default retention of training examples is the job's life."""
    from adapters.jobs import JobExamplesRow

    def examples_of(job_id):
        with queue.session() as s:
            row = s.get(JobExamplesRow, job_id)
            return None if row is None else row.examples

    ended = {}
    for keep, end in [(False, "finish"), (False, "cancel"), (False, "publish"), (True, "publish")]:
        job = queue.submit("acme", f"{end}-{keep}".lower(), "minilm-l6", EXAMPLES, {"keep_examples": keep},
                           max_queued=10)
        assert examples_of(job.id) == EXAMPLES
        if end == "cancel":
            queue.cancel(job.id)
        else:
            claim = queue.claim("w")
            assert claim.job.id == job.id and claim.examples == EXAMPLES
            if end == "finish":
                queue.finish(claim, "failed", error_code="x")
            else:
                queue.publish(claim, *a_version(), promote=True, metrics={}, decision={}, expected_active=None)
        ended[(keep, end)] = examples_of(job.id)
    assert ended == {(False, "finish"): None, (False, "cancel"): None, (False, "publish"): None,
                     (True, "publish"): EXAMPLES}


def test_reading_jobs_never_loads_their_examples(queue):
    """#14.8: get, list, events and heartbeat read no training examples (tens of MB for image
    jobs): every SELECT they issue is checked for the examples table."""
    from sqlalchemy import event

    job = submit(queue)
    claim = queue.claim("w")
    statements: list[str] = []
    listener = lambda conn, cursor, statement, *a: statements.append(statement)  # noqa: E731
    event.listen(queue.registry.engine, "before_cursor_execute", listener)
    try:
        queue.get(job.id)
        queue.list("acme")
        queue.events(job.id)
        queue.heartbeat(claim, 0.5)
        queue.event(claim, "epoch", {"n": 1})
        queue.cancel(job.id)
    finally:
        event.remove(queue.registry.engine, "before_cursor_execute", listener)
    assert statements and not [q for q in statements if "examples" in q], statements


def test_the_maximum_example_count_of_embeddings_is_stored(queue):
    """50,000 examples (GRAFT_MAX_TRAIN_EXAMPLES) in one store: on PostgreSQL one INSERT of
    them all would pass its 65,535 bind parameters."""
    from service.settings import Settings

    n = Settings.model_fields["max_train_examples"].default
    vectors = {f"text {i}": i.to_bytes(4, "little") * 4 for i in range(n)}
    queue.store_embeddings("acme", "f" * 32, vectors)
    sample = [f"text {i}" for i in range(0, n, 997)]
    assert queue.cached_embeddings("acme", "f" * 32, sample) == {t: vectors[t] for t in sample}


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


def test_a_list_of_100_image_jobs_stays_small(queue):
    """#14.8: 100 jobs of 8 base64 images each (~17 MB of examples): listing them allocates
    a bounded amount, not the examples (before: every row's examples were decoded)."""
    import base64
    import os
    import tracemalloc

    image = base64.b64encode(os.urandom(16_000)).decode()  # a ~21 KB encoded image
    examples = [{"image": image, "label": "x" if i % 2 else "y"} for i in range(8)]
    for _ in range(100):
        queue.submit("acme", "imgs", "efficientnet-lite0", examples, {}, max_queued=1000)
    tracemalloc.start()
    try:
        jobs = queue.list("acme", limit=100)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(jobs) == 100
    assert peak < 2_000_000, f"listing 100 jobs allocated {peak / 1e6:.1f} MB"


def test_migration_moves_waiting_jobs_examples_out_of_the_job_row(registry_url):
    """0006 on a database with jobs: queued and running jobs keep their examples (now in
    job_examples); ended jobs' examples are dropped (the new retention default)."""
    import json

    from sqlalchemy import text

    from adapters.database import make_engine
    from adapters.migrations import upgrade

    engine = make_engine(registry_url)
    upgrade(engine, "0005")
    with engine.begin() as c:
        c.execute(text("INSERT INTO tenants (id, created_at) VALUES ('acme', CURRENT_TIMESTAMP)"))
        for job_id, status in (("waiting", "queued"), ("done", "succeeded")):
            c.execute(text(
                "INSERT INTO jobs (id, tenant_id, adapter, backbone, status, params, examples, progress, promoted, "
                "attempts, cancel_requested, created_at) VALUES (:id, 'acme', 'a', 'minilm-l6', :status, '{}', "
                ":examples, 0, false, 0, false, CURRENT_TIMESTAMP)"), {"id": job_id, "status": status,
                                                                       "examples": json.dumps(EXAMPLES)})
    upgrade(engine)
    engine.dispose()
    queue = JobQueue(Registry(registry_url))
    claim = queue.claim("w")
    assert claim.job.id == "waiting" and claim.examples == EXAMPLES
    assert queue.get("done").status == "succeeded"
    queue.registry.close()


def test_erasing_a_tenant_stops_its_running_job_from_publishing(queue):
    from adapters.erasure import erase_tenant

    job = submit(queue)
    claim = queue.claim("w")
    queue.store_embeddings("acme", "fp", {"a": b"1234"})
    queue.store_hidden_states("acme", "fp:s4:lower:fp32", {"a": (1, b"12"), "b": (2, b"1234")})
    queue.registry.create_tenant("globex")
    queue.store_hidden_states("globex", "fp:s4:lower:fp32", {"a": (1, b"12")})
    removed = erase_tenant(queue.registry, "acme")
    assert removed == {"keys": 0, "adapters": 0, "versions": 0, "jobs": 1, "job_examples": 1, "job_events": 2,
                       "cached_vectors": 1, "cached_hidden_states": 2}
    assert queue.cached_hidden_states("acme", "fp:s4:lower:fp32", ["a", "b"]) == {}
    assert queue.cached_hidden_states("globex", "fp:s4:lower:fp32", ["a"]) == {"a": (1, b"12")}
    with pytest.raises(LeaseLost):
        queue.heartbeat(claim)
    with pytest.raises(LeaseLost):
        queue.publish(claim, *a_version(), promote=True, metrics={}, decision={}, expected_active=None)
    assert not queue.registry.tenant_exists("acme")
    with pytest.raises(NotFoundError):
        queue.get(job.id)
    with pytest.raises(NotFoundError):
        erase_tenant(queue.registry, "acme")


def test_erasure_racing_a_publish_leaves_nothing_and_never_deadlocks(queue):
    """Both take the writers' lock before the job's row, so neither waits for the other
    in a cycle (PostgreSQL would abort one with a deadlock error)."""
    from adapters.erasure import erase_tenant

    for round_ in range(6):
        tenant = f"race-{round_}"
        queue.registry.create_tenant(tenant)
        queue.submit(tenant, "a", "minilm-l6", EXAMPLES, {}, max_queued=10)
        claim = queue.claim("w")
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def publish() -> None:
            barrier.wait()
            try:
                queue.publish(claim, *a_version(), promote=True, metrics={}, decision={}, expected_active=None)
            except LeaseLost:
                pass  # the erasure came first
            except BaseException as e:  # pragma: no cover - the assertion reports it
                errors.append(e)

        def erase() -> None:
            barrier.wait()
            try:
                erase_tenant(queue.registry, tenant)
            except BaseException as e:  # pragma: no cover
                errors.append(e)

        threads = [threading.Thread(target=publish), threading.Thread(target=erase)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert not queue.registry.tenant_exists(tenant)
        with queue.session() as s:
            from sqlalchemy import text

            for table in ("adapters", "adapter_versions", "jobs", "job_examples"):
                column = "tenant_id"
                assert s.execute(text(f"SELECT count(*) FROM {table} WHERE {column} = :t"), {"t": tenant}).scalar() == 0
