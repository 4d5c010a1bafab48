"""Micro-batching: concurrent requests (of any tenants) share one backbone pass.

One loop per backbone takes whatever is queued (up to `max_size` items) and runs it in a
worker thread. While a pass runs, new requests queue up, so the batch grows with load by
itself; a lone request on an idle backbone waits at most `max_wait` for company (the
service's default is 0: it does not wait). A pass of one short item (cost at most
`inline_cost`) while the worker thread is idle runs on the event loop itself: the two
thread hops (to the worker and back) cost a lone text about as much as the rest of the
HTTP path (docs/BENCHMARKS.md, the latency path), and a short pass blocks the loop for a
few milliseconds at most, while the requests that arrive meanwhile would have waited for
the backbone anyway.

The queue is bounded by items (`max_queued`): beyond it a request is answered 503 with
Retry-After at once (backpressure, as text-embeddings-inference does), never left to wait
without end. The loop is supervised: should it die, the requests it held fail with 503 and
the next request starts a new loop.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

from service.errors import Unavailable

log = logging.getLogger(__name__)


T = TypeVar("T")
R = TypeVar("R")


class ComputeLane(ThreadPoolExecutor):
    """One worker thread that passes take turns on (several batchers may share it);
    `passes` counts the passes submitted from the event loop and not yet finished."""

    def __init__(self, name: str) -> None:
        super().__init__(max_workers=1, thread_name_prefix=name)
        self.passes = 0


@dataclass
class _Chunk(Generic[T, R]):
    items: list[T]
    future: asyncio.Future[Sequence[R]] = field(repr=False)
    cost: int = 0
    queued_at: float = field(default_factory=time.perf_counter)
    finished_at: float = 0.0  # when its pass ended (in the worker thread)


class MicroBatcher(Generic[T, R]):
    """`run(items)` returns one result per item, in order; it runs in a worker thread.

    `on_batch(items, seconds, queue_waits)` reports each pass: its size, how long it ran,
    and how long each request's items waited in the queue before it started;
    `on_handoff(seconds)`, for each request, the time from the end of its last pass until
    it resumed (the hop from the worker thread back to the event loop).

    A pass holds at most `max_size` items and, when `cost` is given, items whose costs sum
    to at most `max_cost` (text: tokens, as text-embeddings-inference's max_batch_tokens),
    so a pass of long texts is not many times longer than one of short ones. A request
    larger than that is cut into several chunks that queue in order.
    """

    def __init__(
        self,
        name: str,
        run: Callable[[list[T]], Sequence[R]],
        *,
        max_size: int,
        max_wait_s: float,
        on_batch: Callable[[int, float, list[float]], None] | None = None,
        on_handoff: Callable[[float], None] | None = None,
        executor: ComputeLane | None = None,
        max_queued: int | None = None,
        cost: Callable[[T], int] | None = None,
        max_cost: int | None = None,
        inline_cost: int | None = None,
    ) -> None:
        self.name = name
        self._run = run
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.max_queued = max_queued
        self._on_batch = on_batch
        self._on_handoff = on_handoff
        self._cost = cost
        self.max_cost = max_cost if cost is not None else None
        self.inline_cost = inline_cost if cost is not None else None
        self._pending: deque[_Chunk[T, R]] = deque()
        self._queued_items = 0  # items in _pending (backpressure)
        self._inflight: list[_Chunk[T, R]] = []  # the batch the loop holds
        self.restarts = 0  # loops that died and were replaced
        self._wakeup = asyncio.Event()
        # A one-thread executor shared by several batchers makes their passes take turns
        # (the Engine does this on CPU); by default each batcher has its own thread.
        self._owns_executor = executor is None
        self._executor = executor or ComputeLane(f"backbone-{name}")
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop(), name=f"batcher-{self.name}")
            self._task.add_done_callback(self._supervise)

    def _supervise(self, task: asyncio.Task[None]) -> None:
        """The loop ended: unless it was stopped, fail what it held (503); the next request
        starts a new one."""
        if task.cancelled() or self._closing:
            return
        log.error("batcher %s died; failing its requests and restarting", self.name, exc_info=task.exception())
        self.restarts += 1
        error = Unavailable(f"backbone {self.name!r} had an internal error; retry the request",
                            headers={"Retry-After": "1"})
        for chunk in [*self._inflight, *self._pending]:
            if not chunk.future.done():
                chunk.future.set_exception(error)
        self._inflight, self._queued_items = [], 0
        self._pending.clear()
        self._task = None  # the next request starts a new loop (no restart storm on a bug)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # stopped, or died (already reported)
                pass
        if self._owns_executor:
            self._executor.shutdown(wait=True)

    async def submit(self, items: list[T]) -> list[R]:
        """Results for items, sharing backbone passes with whoever else is asking."""
        self.start()
        if self.max_queued is not None and self._queued_items + len(items) > self.max_queued:
            raise Unavailable(
                f"backbone {self.name!r} has {self._queued_items} items queued, the limit "
                f"(GRAFT_MAX_QUEUED_ITEMS): retry shortly", {"queued": self._queued_items, "limit": self.max_queued},
                headers={"Retry-After": "1"},
            )
        chunks = self._chunks(items)
        self._pending.extend(chunks)
        self._queued_items += len(items)
        self._wakeup.set()
        try:
            if len(chunks) == 1:
                rows = await chunks[0].future
            else:
                rows = [row for part in await asyncio.gather(*(c.future for c in chunks)) for row in part]
        except asyncio.CancelledError:
            for c in chunks:  # the caller is gone: its items leave the queue
                c.future.cancel()
            raise
        if self._on_handoff is not None:
            self._on_handoff(time.perf_counter() - max(c.finished_at for c in chunks))
        return list(rows)

    def _chunks(self, items: list[T]) -> list[_Chunk[T, R]]:
        """The request cut into chunks of at most max_size items and max_cost cost (at
        least one item each)."""
        loop = asyncio.get_running_loop()
        costs = [self._cost(item) for item in items] if self._cost is not None else [0] * len(items)
        chunks: list[_Chunk[T, R]] = []
        start, total = 0, 0
        for i, c in enumerate(costs):
            over = self.max_cost is not None and i > start and total + c > self.max_cost
            if i - start == self.max_size or over:
                chunks.append(_Chunk(items[start:i], loop.create_future(), total))
                start, total = i, 0
            total += c
        chunks.append(_Chunk(items[start:], loop.create_future(), total))
        return chunks

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            # Callers that gave up while the batch was gathering (deadline, disconnect) leave it.
            batch = [chunk for chunk in await self._collect() if not chunk.future.done()]
            if not batch:
                continue
            self._inflight = batch
            items = [item for chunk in batch for item in chunk.items]
            try:
                if self._inline(items):
                    result, started, finished = self._timed(items)
                else:
                    self._executor.passes += 1
                    try:
                        result, started, finished = await loop.run_in_executor(self._executor, self._timed, items)
                    finally:
                        self._executor.passes -= 1
            except Exception as e:  # a failed pass fails its requests, not the loop
                log.exception("backbone %s failed on a batch of %d items", self.name, len(items))
                self._inflight = []
                for chunk in batch:
                    if not chunk.future.done():
                        chunk.future.set_exception(e)
                continue
            offset = 0
            for chunk in batch:
                n = len(chunk.items)
                chunk.finished_at = finished
                if not chunk.future.done():
                    chunk.future.set_result(result[offset : offset + n])
                offset += n
            self._inflight = []
            if self._on_batch is not None:
                try:
                    self._on_batch(len(items), finished - started, [started - chunk.queued_at for chunk in batch])
                except Exception:  # metrics must never stop serving
                    log.exception("batcher %s: reporting a batch failed", self.name)

    def _inline(self, items: list[T]) -> bool:
        """A pass of one short item while no pass runs or waits on the worker thread."""
        return (self.inline_cost is not None and len(items) == 1 and self._executor.passes == 0
                and self._cost(items[0]) <= self.inline_cost)  # type: ignore[misc]  # inline_cost implies cost

    def _timed(self, items: list[T]) -> tuple[Sequence[R], float, float]:
        """The pass, when it started (after any turn-taking) and when it ended."""
        started = time.perf_counter()
        result = self._run(items)
        return result, started, time.perf_counter()

    async def _collect(self) -> list[_Chunk[T, R]]:
        """Wait for work, then take queued chunks until the batch is full or the wait is over."""
        deadline: float | None = None
        batch: list[_Chunk[T, R]] = []
        size, cost = 0, 0
        while True:
            while self._pending and self._fits(self._pending[0], batch, size, cost):
                chunk = self._pending.popleft()
                self._queued_items -= len(chunk.items)
                if chunk.future.done():  # cancelled while queued
                    continue
                batch.append(chunk)
                size += len(chunk.items)
                cost += chunk.cost
            if batch and (size >= self.max_size or self._pending):
                return batch  # full, or the next chunk does not fit
            if batch and deadline is None:
                deadline = time.monotonic() + self.max_wait_s
            timeout = None if deadline is None else deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                return batch
            self._wakeup.clear()
            if self._pending:
                continue
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                return batch

    def _fits(self, chunk: _Chunk[T, R], batch: list[_Chunk[T, R]], size: int, cost: int) -> bool:
        if not batch:
            return True
        within_cost = self.max_cost is None or cost + chunk.cost <= self.max_cost
        return size + len(chunk.items) <= self.max_size and within_cost
