"""Fine-tune worker processes: started beside the HTTP service (GRAFT_TRAIN_WORKERS) and
restarted with backoff when they die, and the set-up of each such process
(`python -m service.worker`)."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from service.settings import Settings

log = logging.getLogger(__name__)


def _die_with_parent() -> None:
    """Linux: the worker gets SIGTERM when the service process that started it dies, even by
    kill -9, instead of living on as an orphan (its job's lease then expires and retries)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def restart_delay(crashes: int) -> float:
    """Seconds before restarting a worker that died `crashes` times in a row: 0 for the first,
    then 1, 2, 4 ... up to 60, so a worker that cannot start does not spin the CPU."""
    return 0.0 if crashes <= 1 else min(60.0, 2.0 ** (crashes - 2))


class WorkerPool:
    """Fine-tune worker processes beside the HTTP service, restarted with backoff when they die
    (a worker that lived STABLE_S counts as healthy again)."""

    STABLE_S = 60.0

    def __init__(self, settings: Settings, command: list[str] | None = None) -> None:
        self.settings = settings
        self.command = command or [sys.executable, "-m", "service.worker"]
        self.procs: list[subprocess.Popen[bytes] | None] = []
        self.spawns = 0
        self._started: list[float] = []
        self._crashes: list[int] = []
        self._restart_at: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.settings.train_workers <= 0:
            return
        n = self.settings.train_workers
        self._started, self._crashes, self._restart_at = [0.0] * n, [0] * n, [0.0] * n
        self.procs = [self._spawn(i) for i in range(n)]
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="train-workers")

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.command, cwd=Path(__file__).resolve().parents[1], preexec_fn=_die_with_parent)
        self._started[slot] = time.monotonic()
        self.spawns += 1
        log.info("started fine-tune worker pid %d", proc.pid)
        return proc

    async def _supervise(self, tick_s: float = 0.5) -> None:
        while True:
            await asyncio.sleep(tick_s)
            now = time.monotonic()
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None:
                    lived = now - self._started[i]
                    self._crashes[i] = 1 if lived >= self.STABLE_S else self._crashes[i] + 1
                    delay = restart_delay(self._crashes[i])
                    self._restart_at[i] = now + delay
                    log.warning("fine-tune worker pid %d exited with %s after %.0f s; restarting in %.0f s",
                                proc.pid, proc.returncode, lived, delay)
                    self.procs[i] = None
                if self.procs[i] is None and now >= self._restart_at[i]:
                    self.procs[i] = self._spawn(i)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        procs = [p for p in self.procs if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()


def prepare_worker_process(settings: Settings) -> None:
    """Set up a fine-tune worker process: logs, lower CPU priority and few threads (serving
    keeps its cores), and its metrics."""
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s [worker %(process)d] %(name)s: %(message)s")
    for name in ("service", "adapters", "models"):
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        os.nice(settings.train_nice)
    except OSError:
        pass
    import torch

    torch.set_num_threads(settings.train_threads)
    if settings.train_metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # A standalone trainer (its own pod) serves its metrics itself; one started by the
        # service writes them into the service's multiprocess directory instead.
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.train_metrics_port)
        except OSError as e:  # another worker on this host has the port: train without it
            log.warning("metrics port %d unavailable (%s); set GRAFT_TRAIN_METRICS_PORT", settings.train_metrics_port, e)
