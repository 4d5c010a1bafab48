"""AdapterCache: lazy loads, byte-bounded LRU that never evicts a leased adapter, per-key
load locks, registry watch, and refusal of corrupt versions."""
from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from sqlalchemy import update

from adapters import zero_shot
from adapters.cache import AdapterCache, BackboneNotLoaded, BackboneRef, CacheEvents
from adapters.format import AdapterFormatError, encode
from adapters.registry import NotFoundError, Registry, VersionRow

FP, DIM = "f" * 32, 16


def version(seed: int = 0, labels=("a", "b", "c")):
    vectors = np.random.default_rng(seed).normal(size=(len(labels), DIM))
    return encode(*zero_shot.build("bb", FP, list(labels), vectors))


class Counts(CacheEvents):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.evictions = 0
        self.failures = 0
        self.on_load = lambda s: setattr(self, "loads", self.loads + 1)
        self.on_evict = lambda: setattr(self, "evictions", self.evictions + 1)
        self.on_failure = lambda r: setattr(self, "failures", self.failures + 1)


@pytest.fixture
def registry(registry_url):
    r = Registry(registry_url)
    r.create_tenant("t")
    yield r
    r.close()


def make_cache(registry, max_bytes=10**9, events=None) -> AdapterCache:
    refs = {"bb": BackboneRef(FP, DIM)}
    return AdapterCache(registry, refs.get, max_bytes=max_bytes, poll_interval_s=0.05, events=events)


def one_adapter_bytes() -> int:
    from adapters.format import decode

    config, weights = version()
    return decode(config.to_json(), weights, fingerprint=FP, dim=DIM).nbytes


def test_lazy_load_once_per_key_under_concurrency(registry):
    registry.create_adapter("t", "a", *version())
    events = Counts()
    cache = make_cache(registry, events=events)

    async def use():
        async with cache.lease("t", "a") as adapter:
            await asyncio.sleep(0.01)
            return adapter.version

    async def main():
        return await asyncio.gather(*(use() for _ in range(20)))

    assert asyncio.run(main()) == [1] * 20
    assert events.loads == 1


def test_eviction_by_bytes_never_evicts_a_leased_adapter(registry):
    n = 12
    for i in range(n):
        registry.create_adapter("t", f"a{i}", *version(seed=i))
    budget = 3 * one_adapter_bytes()
    events = Counts()
    cache = make_cache(registry, max_bytes=budget, events=events)
    violations: list[str] = []

    async def worker(wid: int) -> None:
        rng = random.Random(wid)
        for _ in range(40):
            name = f"a{rng.randrange(n)}"
            async with cache.lease("t", name) as adapter:
                for _ in range(rng.randrange(1, 4)):
                    await asyncio.sleep(rng.random() * 0.003)
                    if cache.resident("t", name) is not adapter:
                        violations.append(f"{name} evicted or replaced while leased")
                assert adapter.config.labels == ["a", "b", "c"]

    async def main():
        await asyncio.gather(*(worker(w) for w in range(8)))

    asyncio.run(main())
    assert violations == []
    assert events.evictions > 0, "the budget never forced an eviction: the test proves nothing"
    assert cache.resident_bytes <= budget  # nothing leased any more: back under budget


def test_unknown_adapter_and_backbone(registry):
    registry.create_adapter("t", "a", *version())
    cache = AdapterCache(registry, {}.get, max_bytes=10**6)

    async def main():
        with pytest.raises(BackboneNotLoaded, match="GRAFT_BACKBONES"):
            async with cache.lease("t", "a"):
                pass
        with pytest.raises(NotFoundError):
            async with make_cache(registry).lease("t", "missing"):
                pass

    asyncio.run(main())


def test_watch_swaps_versions_and_drops_deleted(registry):
    registry.create_adapter("t", "a", *version())
    registry.add_version("t", "a", *version(seed=1), activate=False)
    cache = make_cache(registry)

    async def main():
        await cache.refresh()  # first look: sets the watermark
        async with cache.lease("t", "a") as adapter:
            assert adapter.version == 1
        other = Registry(registry.url, migrate=False)  # as if another replica
        other.promote("t", "a", 2)
        await cache.refresh()
        assert cache.resident("t", "a").version == 2
        other.rollback("t", "a")
        await cache.refresh()
        assert cache.resident("t", "a").version == 1
        other.delete_adapter("t", "a")
        await cache.refresh()
        assert cache.resident("t", "a") is None
        other.close()

    asyncio.run(main())


def tamper(registry, adapter: str, version: int) -> None:
    with registry.engine.begin() as c:
        c.execute(update(VersionRow).where(VersionRow.adapter == adapter, VersionRow.version == version)
                  .values(weights=b"\x00" * 64))


def test_corrupt_new_version_is_refused_and_the_old_keeps_serving(registry):
    registry.create_adapter("t", "a", *version())
    registry.add_version("t", "a", *version(seed=1), activate=False)
    tamper(registry, "a", 2)
    events = Counts()
    cache = make_cache(registry, events=events)

    async def main():
        await cache.refresh()
        async with cache.lease("t", "a"):
            pass
        registry.promote("t", "a", 2)
        await cache.refresh()
        assert cache.resident("t", "a").version == 1
        assert events.failures == 1

    asyncio.run(main())


def test_cold_load_of_corrupt_active_falls_back_to_previous(registry):
    registry.create_adapter("t", "a", *version())
    registry.add_version("t", "a", *version(seed=1), activate=True)
    tamper(registry, "a", 2)
    cache = make_cache(registry)

    async def main():
        async with cache.lease("t", "a") as adapter:
            assert adapter.version == 1
        registry.create_adapter("t", "b", *version())
        tamper(registry, "b", 1)
        with pytest.raises(AdapterFormatError, match="checksum"):
            async with make_cache(registry).lease("t", "b"):
                pass

    asyncio.run(main())


def test_one_load_per_key_even_when_waiters_arrive_in_waves(registry):
    """The per-key lock stays while anyone waits on it. Here: A loads while B waits; A
    releases; before B runs, the entry is evicted and C arrives. C must queue behind B on
    the same lock (one more load, B's), not take a fresh lock and load beside B."""
    from adapters.format import decode

    registry.create_adapter("t", "a", *version())
    cache = make_cache(registry)
    stored, _ = registry.active("t", "a")
    adapter = decode(stored.config, stored.weights, fingerprint=FP, dim=DIM, version=stored.version)
    gates = [asyncio.Event(), asyncio.Event()]
    loads: list[int] = []

    async def load_active(key):
        loads.append(len(loads))
        await gates[min(len(loads) - 1, 1)].wait()
        return adapter

    cache._load_active = load_active  # type: ignore[method-assign]
    cache._watermark = registry.watermark()  # as after the watcher's first look: no awaits but ours

    async def lease_once():
        async with cache.lease("t", "a"):
            pass

    async def main():
        a = asyncio.create_task(lease_once())
        b = asyncio.create_task(lease_once())
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # A is loading, B waits on the lock
        gates[0].set()
        await asyncio.sleep(0)  # A finished and released; B's wake-up is queued behind us
        cache._entries.clear()  # evicted meanwhile
        c = asyncio.create_task(lease_once())
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        gates[1].set()
        await asyncio.gather(a, b, c)

    asyncio.run(main())
    assert len(loads) == 2, f"{len(loads)} loads: a second lock let two coroutines load one adapter"
    assert not cache._load_locks  # nothing left behind


def test_a_version_promoted_before_the_first_refresh_is_not_stale_forever(registry):
    registry.create_adapter("t", "a", *version())
    registry.add_version("t", "a", *version(seed=1), activate=False)
    cache = make_cache(registry)

    async def main():
        async with cache.lease("t", "a") as first:  # loaded before the watcher ever looked
            assert first.version == 1
        registry.promote("t", "a", 2)
        cache.start()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if cache.resident("t", "a") and cache.resident("t", "a").version == 2:
                break
        async with cache.lease("t", "a") as now:
            version = now.version
        await cache.close()
        return version

    assert asyncio.run(main()) == 2


def test_verification_runs_off_the_event_loop(registry, monkeypatch):
    import threading

    registry.create_adapter("t", "a", *version())
    cache = make_cache(registry)
    threads: list[str] = []
    original = cache._verify
    monkeypatch.setattr(cache, "_verify", lambda stored: (threads.append(threading.current_thread().name),
                                                          original(stored))[1])

    async def main():
        async with cache.lease("t", "a"):
            return threading.current_thread().name

    loop_thread = asyncio.run(main())
    assert threads and loop_thread not in threads
