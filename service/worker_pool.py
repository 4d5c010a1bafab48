"""Fine-tune worker processes beside the HTTP service (GRAFT_TRAIN_WORKERS), restarted when
they die; each runs `python -m service.worker`."""
from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
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


class WorkerPool:
    """Fine-tune worker processes beside the HTTP service, restarted when they die."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.procs: list[subprocess.Popen[bytes]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.settings.train_workers <= 0:
            return
        self.procs = [self._spawn() for _ in range(self.settings.train_workers)]
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="train-workers")

    def _spawn(self) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-m", "service.worker"], cwd=Path(__file__).resolve().parents[1],
                                preexec_fn=_die_with_parent)
        log.info("started fine-tune worker pid %d", proc.pid)
        return proc

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for i, proc in enumerate(self.procs):
                if proc.poll() is not None:
                    log.warning("fine-tune worker pid %d exited with %s; restarting", proc.pid, proc.returncode)
                    self.procs[i] = self._spawn()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
