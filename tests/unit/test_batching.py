"""MicroBatcher: concurrent submits share passes, large requests split, callers get their rows."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batching import ComputeLane, MicroBatcher


class Recorder:
    """A deterministic 'backbone': row i is (value of item i, negative?), with a fixed pass time."""

    def __init__(self, seconds: float = 0.02, fail_on: object = None) -> None:
        self.batches: list[list[int]] = []
        self.seconds = seconds
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def __call__(self, items: list[int]) -> list[tuple[float, bool]]:
        if self.fail_on in items:
            raise RuntimeError("boom")
        with self.lock:
            self.batches.append(list(items))
        time.sleep(self.seconds)
        return [(float(i), i < 0) for i in items]


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_batched_and_routed_back():
    rec = Recorder()

    async def main():
        b = MicroBatcher("t", rec, max_size=64, max_wait_s=0.005)
        results = await asyncio.gather(*(b.submit([i * 10 + k for k in range(4)]) for i in range(20)))
        await b.close()
        return results

    results = run(main())
    for i, r in enumerate(results):
        assert [v for v, _ in r] == [i * 10 + k for k in range(4)]
    assert sum(len(b) for b in rec.batches) == 80
    assert len(rec.batches) < 20  # requests shared passes
    assert max(len(b) for b in rec.batches) <= 64


def test_request_larger_than_max_size_is_split_and_reassembled():
    rec = Recorder(seconds=0)

    async def main():
        b = MicroBatcher("t", rec, max_size=8, max_wait_s=0)
        r = await b.submit(list(range(-3, 20)))
        await b.close()
        return r

    r = run(main())
    assert r == [(float(i), i < 0) for i in range(-3, 20)]
    assert all(len(batch) <= 8 for batch in rec.batches)


def test_lone_request_waits_at_most_max_wait():
    rec = Recorder(seconds=0)

    async def main():
        b = MicroBatcher("t", rec, max_size=64, max_wait_s=0.05)
        t = time.perf_counter()
        await b.submit([1])
        elapsed = time.perf_counter() - t
        await b.close()
        return elapsed

    assert run(main()) < 1.0


def test_failed_pass_fails_only_its_requests():
    rec = Recorder(seconds=0, fail_on=666)

    async def main():
        b = MicroBatcher("t", rec, max_size=4, max_wait_s=0)
        bad = asyncio.ensure_future(b.submit([666]))
        with pytest.raises(RuntimeError):
            await bad
        good = await b.submit([1, 2])  # the loop survived
        await b.close()
        return good

    assert run(main()) == [(1.0, False), (2.0, False)]


def test_cancelled_request_leaves_the_queue():
    rec = Recorder(seconds=0.1)

    async def main():
        b = MicroBatcher("t", rec, max_size=2, max_wait_s=0)
        first = asyncio.ensure_future(b.submit([1, 2]))  # occupies the backbone
        await asyncio.sleep(0.02)
        doomed = asyncio.ensure_future(b.submit([99, 98]))
        await asyncio.sleep(0.01)
        doomed.cancel()
        await first
        await b.submit([3])
        await b.close()

    run(main())
    assert [99, 98] not in rec.batches and all(99 not in b for b in rec.batches)


def test_caller_that_gives_up_while_the_batch_gathers_is_left_out():
    rec = Recorder(seconds=0)

    async def main():
        b = MicroBatcher("t", rec, max_size=64, max_wait_s=0.2)
        hasty = asyncio.ensure_future(asyncio.wait_for(b.submit([7, 8, 9]), 0.05))
        patient = asyncio.ensure_future(b.submit([1]))
        with pytest.raises(TimeoutError):
            await hasty
        assert await patient == [(1.0, False)]
        await b.close()

    run(main())
    assert rec.batches == [[1]]


def test_batchers_sharing_a_lane_take_turns():
    """Two backbones on one CPU lane: passes never overlap, and they alternate under load."""
    from concurrent.futures import ThreadPoolExecutor

    log: list[tuple[str, float, float]] = []

    def backbone(name: str):
        def run(items: list[int]) -> list[tuple[float, bool]]:
            start = time.perf_counter()
            time.sleep(0.01)
            log.append((name, start, time.perf_counter()))
            return [(float(i), False) for i in items]
        return run

    async def main():
        lane = ComputeLane("lane")
        text = MicroBatcher("text", backbone("text"), max_size=4, max_wait_s=0.001, executor=lane)
        image = MicroBatcher("image", backbone("image"), max_size=4, max_wait_s=0.001, executor=lane)
        await asyncio.gather(*(text.submit(list(range(4))) for _ in range(10)),
                             *(image.submit(list(range(4))) for _ in range(10)))
        await text.close()
        await image.close()
        lane.shutdown()

    run(main())
    spans = sorted(log, key=lambda e: e[1])
    assert all(a[2] <= b[1] for a, b in zip(spans, spans[1:]))  # one pass at a time
    names = [n for n, _, _ in spans]
    assert names.count("text") == names.count("image") == 10
    switches = sum(a != b for a, b in zip(names, names[1:]))
    assert switches >= 15, names  # alternating, not one backbone's queue drained first


def test_a_dead_loop_fails_its_requests_with_503_and_restarts():
    """on_batch raising used to kill the loop: every later request hung for ever."""
    from service.errors import Unavailable

    reports = []

    def on_batch(n, seconds, waits):
        reports.append(n)
        if len(reports) == 1:
            raise RuntimeError("metrics backend broke")

    async def main():
        b = MicroBatcher("t", lambda items: [i * 2 for i in items], max_size=8, max_wait_s=0.001, on_batch=on_batch)
        first = await asyncio.wait_for(b.submit([1, 2]), 5)  # served, even though reporting failed
        second = await asyncio.wait_for(b.submit([3]), 5)  # the loop still runs
        await b.close()
        return first, second

    assert asyncio.run(main()) == ([2, 4], [6])

    async def dying():
        b = MicroBatcher("t", lambda items: items, max_size=8, max_wait_s=0.001)

        async def broken_collect():
            raise RuntimeError("a bug in the loop")

        b._collect = broken_collect  # type: ignore[method-assign]
        with pytest.raises(Unavailable, match="internal error"):
            await asyncio.wait_for(b.submit([1]), 5)
        assert b.restarts == 1
        del b._collect  # the bug is gone: the next request gets a new loop
        assert await asyncio.wait_for(b.submit([7]), 5) == [7]
        await b.close()

    asyncio.run(dying())


def test_a_full_queue_answers_503_with_retry_after_at_once():
    from service.errors import Unavailable

    release = threading.Event()

    def slow(items):
        release.wait(5)
        return items

    async def main():
        b = MicroBatcher("t", slow, max_size=4, max_wait_s=0.0, max_queued=8)
        running = asyncio.create_task(b.submit([0, 1, 2, 3]))  # taken by the loop
        await asyncio.sleep(0.05)
        queued = asyncio.create_task(b.submit(list(range(8))))  # fills the queue
        await asyncio.sleep(0.01)
        with pytest.raises(Unavailable) as refused:
            await b.submit([9])
        assert refused.value.headers["Retry-After"] == "1" and refused.value.status == 503
        release.set()
        assert len(await queued) == 8 and len(await running) == 4
        assert await b.submit([9]) == [9]  # room again
        await b.close()

    asyncio.run(main())


def test_a_pass_holds_at_most_max_cost_and_big_requests_are_cut_by_cost():
    """#17.3: with a cost per item (text: tokens), a pass holds at most max_cost, so a
    pass of long texts holds fewer of them; a request over the budget is cut into passes."""
    rec = Recorder(seconds=0.01)

    async def main():
        b = MicroBatcher("t", rec, max_size=64, max_wait_s=0.005, cost=lambda i: i, max_cost=100)
        long = b.submit([60, 50, 40, 30, 20])  # 200 in all: three passes of <= 100
        short = [b.submit([1, 2]) for _ in range(10)]
        results = await asyncio.gather(long, *short)
        alone = await b.submit([500])  # one item over the budget still runs, alone
        await b.close()
        return results, alone

    results, alone = run(main())
    assert [v for v, _ in results[0]] == [60, 50, 40, 30, 20]
    assert all([v for v, _ in r] == [1, 2] for r in results[1:])
    assert [v for v, _ in alone] == [500]
    assert all(sum(batch) <= 100 for batch in rec.batches[:-1]) and rec.batches[-1] == [500]
    assert sorted(x for batch in rec.batches for x in batch) == sorted([60, 50, 40, 30, 20, *[1, 2] * 10, 500])
    assert len(rec.batches) < 1 + 10 + 1 + 2  # the short requests shared passes


def test_each_request_reports_its_handoff_from_the_pass_end():
    """#17.1: on_handoff gets, per request, the time from the end of its pass to its resuming."""
    seen: list[float] = []

    async def main():
        b = MicroBatcher("t", Recorder(seconds=0.001), max_size=8, max_wait_s=0, on_handoff=seen.append)
        await asyncio.gather(*(b.submit([i]) for i in range(5)), b.submit(list(range(20))))
        await b.close()

    run(main())
    assert len(seen) == 6 and all(0 <= s < 1.0 for s in seen), seen


def test_a_lone_short_item_runs_on_the_event_loop_when_the_lane_is_idle():
    """No thread hops for a lone short text: it runs on the loop's own thread; longer items,
    passes of several items, and any pass while the shared lane is busy go to the lane."""
    threads: list[tuple[list[int], str]] = []

    def where(items: list[int]) -> list[tuple[float, bool]]:
        threads.append((list(items), threading.current_thread().name))
        time.sleep(0.02 if 7 in items else 0)
        return [(float(i), False) for i in items]

    async def main():
        lane = ComputeLane("lane")
        text = MicroBatcher("text", where, max_size=8, max_wait_s=0, executor=lane, cost=lambda i: i,
                            max_cost=1000, inline_cost=5)
        other = MicroBatcher("image", where, max_size=8, max_wait_s=0, executor=lane)
        assert await text.submit([3]) == [(3.0, False)]  # short, idle: inline
        await text.submit([50])  # longer than inline_cost
        await text.submit([1, 2])  # two items
        busy = asyncio.ensure_future(other.submit([7]))  # the lane holds the other backbone's pass
        await asyncio.sleep(0.005)
        await text.submit([4])
        await busy
        await text.close()
        await other.close()
        lane.shutdown()

    run(main())
    main_thread = threading.main_thread().name
    on = {tuple(items): name for items, name in threads}
    assert on[(3,)] == main_thread
    assert on[(50,)] != main_thread and on[(1, 2)] != main_thread and on[(7,)] != main_thread
    assert on[(4,)] != main_thread  # the lane was busy: its turn comes after the other pass
