"""Keeping a claimed job's lease while the pipeline computes (a heartbeat thread)."""
from __future__ import annotations

import logging
import threading
from typing import Any

from adapters.jobs import Claimed, JobQueue, LeaseLost

log = logging.getLogger(__name__)


class LeaseKeeper(threading.Thread):
    """Renews the job's lease while the pipeline computes, and is its reporter: events go to
    the job, progress rides on the next heartbeat, a cancel request is noticed there."""

    def __init__(self, queue: JobQueue, claim: Claimed, every_s: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{claim.job.id[:8]}")
        self.queue, self.claim, self.every_s = queue, claim, every_s
        self._progress = 0.0
        self.cancel_requested = False
        self._stop = threading.Event()

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self.queue.event(self.claim, kind, data)

    def progress(self, fraction: float) -> None:
        self._progress = fraction

    def cancelled(self) -> bool:
        return self.cancel_requested

    def run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.cancel_requested = self.queue.heartbeat(self.claim, self._progress)
            except LeaseLost:
                self.cancel_requested = True
                return
            except Exception:  # a blip of the database: the lease outlives a few missed beats
                log.warning("heartbeat failed; will retry", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
