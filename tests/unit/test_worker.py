"""The fine-tune worker loop and its supervisor under failure: a registry outage while a job
finishes does not kill the worker; a worker that keeps dying is restarted with backoff."""
from __future__ import annotations

import asyncio
import sys
import threading

import pytest
from sqlalchemy.exc import OperationalError

from adapters.jobs import JobQueue
from service.settings import Settings
from service.worker import TrainingError, Worker
from service.worker_pool import WorkerPool, restart_delay

EXAMPLES = [{"text": t, "label": l} for t, l in [("a", "x"), ("b", "x"), ("c", "y"), ("d", "y")]]


def test_a_registry_outage_while_a_job_finishes_does_not_kill_the_worker(tmp_path, monkeypatch):
    worker = Worker(Settings(home=tmp_path, job_poll_ms=10, job_lease_s=30))
    worker.registry.create_tenant("acme")
    for _ in range(2):
        worker.queue.submit("acme", "a", "minilm-l6", EXAMPLES, {}, max_queued=10)
    trained: list[str] = []

    def fail_training(claim, beat):
        trained.append(claim.job.id)
        raise TrainingError("bad_data", "the examples are unusable")

    def registry_away(*args, **kwargs):
        raise OperationalError("UPDATE jobs", {}, Exception("connection refused"))

    monkeypatch.setattr(worker, "_train", fail_training)
    monkeypatch.setattr(JobQueue, "finish", registry_away)
    stop = threading.Event()
    loop = threading.Thread(target=worker.run_forever, args=(stop,), daemon=True)
    loop.start()
    deadline = threading.Event()
    for _ in range(200):
        if len(trained) == 2:
            break
        deadline.wait(0.05)
    stop.set()
    loop.join(5)
    assert len(trained) == 2, "the worker died with the first job"  # it went on to the second
    assert not loop.is_alive()
    worker.registry.close()


def test_restart_delays_back_off():
    assert [restart_delay(n) for n in range(1, 9)] == [0, 1, 2, 4, 8, 16, 32, 60]


def test_a_worker_that_keeps_dying_is_restarted_with_backoff():
    async def main() -> int:
        pool = WorkerPool(Settings(train_workers=1), command=[sys.executable, "-c", "raise SystemExit(3)"])
        pool.start()
        await asyncio.sleep(4.5)
        await pool.stop()
        return pool.spawns

    spawns = asyncio.run(main())
    # Without backoff (a restart every tick) there would be 9 or more; with it: 0 + 1 + 2 s.
    assert 2 <= spawns <= 4, spawns


@pytest.mark.parametrize("exc", [RuntimeError("a bug"), KeyError("x")])
def test_an_unexpected_grpc_failure_is_internal_in_metrics_and_to_the_caller(exc, monkeypatch):
    import grpc

    from service import grpc_server
    from service.auth import ADMIN

    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(grpc_server.metrics, "observe_grpc", lambda method, code, s: seen.append((method, code)))

    class Tenancy:
        async def authenticate(self, header, client=None):
            return ADMIN

    class Engine:
        tenancy = Tenancy()

    class Context:
        aborted: tuple | None = None

        def invocation_metadata(self):
            return ()

        def peer(self):
            return "ipv4:127.0.0.1:50000"

        def time_remaining(self):
            return None

        async def abort(self, code, message):
            self.aborted = (code, message)
            raise grpc.aio.AbortError()

    class Servicer:
        engine = Engine()

        @grpc_server.rpc
        async def Broken(self, request, who):
            raise exc

    context = Context()
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(Servicer().Broken(None, context))
    assert context.aborted[0] == grpc.StatusCode.INTERNAL and "a bug" not in context.aborted[1]
    assert seen == [("Broken", "INTERNAL")]


def test_a_job_on_a_backbone_given_as_a_local_directory_trains(minilm_spec, graft_home, tmp_path):
    """The server names a directory backbone by its base name; the trainer must find it through
    its own GRAFT_BACKBONES, not take the name for a path (it used to fail every such job)."""
    from tests.integration.data import split

    train, _ = split()
    directory = str(minilm_spec.path)  # a local Hugging Face directory; its id is "model"
    worker = Worker(Settings(home=graft_home, database_url=f"sqlite:///{tmp_path}/r.db",
                             backbones=[directory], job_lease_s=30))
    worker.registry.create_tenant("acme")
    job = worker.queue.submit("acme", "local", minilm_spec.path.name, train, {"epochs": 5}, max_queued=10)
    worker.run(worker.queue.claim(worker.id))
    done = worker.queue.get(job.id)
    assert done.status == "succeeded", (done.error_code, done.error_message)
    assert worker.registry.active("acme", "local")[0].version == 1
    # A backbone the trainer is not configured with fails the job with a clear code.
    other = worker.queue.submit("acme", "x", "not-configured", train, {}, max_queued=10)
    worker.run(worker.queue.claim(worker.id))
    failed = worker.queue.get(other.id)
    assert failed.status == "failed" and failed.error_code == "backbone_unavailable"
    worker.registry.close()
