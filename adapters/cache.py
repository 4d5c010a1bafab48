"""AdapterCache: the adapters resident in this process.

- lazy: an adapter is loaded from the Registry on first use, verified (checksum,
  backbone fingerprint, dims) before it serves;
- bounded: least recently used adapters are evicted once resident bytes pass a budget;
- leased: an adapter in use by an in-flight request is never evicted under it (vLLM #14497);
- one load lock per key: misses on different adapters load in parallel, misses on the same
  adapter load once;
- watching: a cheap poll of the Registry's watermark finds promotions, rollbacks and
  deletions made by any replica, and swaps or drops the resident copy.
A version that fails verification is refused and counted; whatever served before keeps
serving (the resident copy, or on a cold load the most recent earlier active version).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from adapters.format import Adapter, AdapterConfig, AdapterFormatError, decode
from adapters.registry import NotFoundError, Registry, StoredVersion

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (tenant, adapter)


@dataclass(frozen=True)
class BackboneRef:
    """What the cache needs to know of a backbone to verify an adapter for it."""

    fingerprint: str
    dim: int
    split: int | None = None  # first adapted layer of a split text backbone (LoRA adapters)


class BackboneNotLoaded(LookupError):
    """The adapter was built on a backbone this process does not serve."""


@dataclass
class _Entry:
    adapter: Adapter
    leases: int = 0


@dataclass
class CacheEvents:
    """Hooks for metrics (the service counts these; adapters/ knows nothing of Prometheus)."""

    on_hit: Callable[[], None] = lambda: None
    on_miss: Callable[[], None] = lambda: None
    on_load: Callable[[float], None] = lambda seconds: None
    on_evict: Callable[[], None] = lambda: None
    on_failure: Callable[[str], None] = lambda reason: None
    on_resident: Callable[[int, int], None] = lambda count, nbytes: None


class AdapterCache:
    def __init__(
        self,
        registry: Registry,
        backbones: Callable[[str], BackboneRef | None],
        *,
        max_bytes: int,
        poll_interval_s: float = 0.5,
        events: CacheEvents | None = None,
    ) -> None:
        self.registry = registry
        self._backbones = backbones
        self.max_bytes = max_bytes
        self.poll_interval_s = poll_interval_s
        self.events = events or CacheEvents()
        self._entries: OrderedDict[Key, _Entry] = OrderedDict()
        self._bytes = 0
        self._load_locks: dict[Key, tuple[asyncio.Lock, int]] = {}  # lock, coroutines using it
        self._changed_while_loading: set[Key] = set()
        self._watermark: int | None = None
        self.registry_ok = True  # did the last look at the registry succeed?
        self._watcher: asyncio.Task[None] | None = None

    # -- serving -----------------------------------------------------------------------

    @asynccontextmanager
    async def lease(self, tenant: str, adapter: str) -> AsyncIterator[Adapter]:
        """The active version of (tenant, adapter), safe from eviction until the block ends."""
        entry = await self._get((tenant, adapter))
        entry.leases += 1
        self._evict()  # only now: the new entry is leased, so it cannot be the victim
        try:
            yield entry.adapter
        finally:
            entry.leases -= 1
            if entry.leases == 0:
                self._evict()

    def resident(self, tenant: str, adapter: str) -> Adapter | None:
        entry = self._entries.get((tenant, adapter))
        return entry.adapter if entry else None

    @property
    def resident_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    async def _get(self, key: Key) -> _Entry:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            self.events.on_hit()
            return entry
        self.events.on_miss()
        if self._watermark is None:
            # Before the watcher's first look: changes from here on are applied to what we
            # load now (else a version promoted meanwhile would stay stale forever).
            self._watermark = await asyncio.to_thread(self.registry.watermark)
        lock, users = self._load_locks.get(key, (asyncio.Lock(), 0))
        self._load_locks[key] = (lock, users + 1)  # counted: a waiter keeps the lock alive
        try:
            async with lock:
                entry = self._entries.get(key)  # loaded by whoever held the lock before us
                while entry is None:
                    self._changed_while_loading.discard(key)
                    adapter = await self._load_active(key)
                    if key in self._changed_while_loading:
                        continue  # the registry moved on while we read it: read again
                    entry = self._put(key, adapter)
        finally:
            lock, users = self._load_locks[key]
            if users == 1:
                del self._load_locks[key]
            else:
                self._load_locks[key] = (lock, users - 1)
        return entry

    async def _load_active(self, key: Key) -> Adapter:
        started = time.perf_counter()
        stored, history = await asyncio.to_thread(self.registry.active, *key)
        try:
            adapter = await asyncio.to_thread(self._verify, stored)  # SHA-256 + safetensors: off the loop
        except AdapterFormatError as first:
            # Keep serving what served before: the most recent earlier active version.
            for version in reversed(history):
                try:
                    older = await asyncio.to_thread(self.registry.get_version, key[0], key[1], version)
                    adapter = await asyncio.to_thread(self._verify, older)
                except (AdapterFormatError, NotFoundError):
                    continue
                log.error("adapter %s/%s v%d refused (%s); serving v%d", *key, stored.version, first, version)
                break
            else:
                raise
        self.events.on_load(time.perf_counter() - started)
        return adapter

    def _verify(self, stored: StoredVersion) -> Adapter:
        if stored.authentic is False:
            log.error("adapter %s/%s v%d refused: its signature does not verify (rewritten outside Graft, "
                      "or signed under another GRAFT_SIGNING_KEY)", stored.tenant, stored.adapter, stored.version)
            self.events.on_failure("signature")
            raise AdapterFormatError(f"version {stored.version} of adapter {stored.adapter!r} is not signed by "
                                     "this deployment's GRAFT_SIGNING_KEY")
        config = AdapterConfig.from_json(stored.config)
        ref = self._backbones(config.backbone)
        if ref is None:
            raise BackboneNotLoaded(
                f"adapter {stored.adapter!r} runs on backbone {config.backbone!r}, which this server does not load; "
                "add it to GRAFT_BACKBONES"
            )
        try:
            return decode(stored.config, stored.weights, fingerprint=ref.fingerprint, dim=ref.dim,
                          version=stored.version, split=ref.split)
        except AdapterFormatError as e:
            log.error("adapter %s/%s v%d refused: %s", stored.tenant, stored.adapter, stored.version, e)
            self.events.on_failure("verification")
            raise

    def _put(self, key: Key, adapter: Adapter) -> _Entry:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.adapter.nbytes
        entry = _Entry(adapter)
        self._entries[key] = entry
        self._bytes += adapter.nbytes
        return entry

    def _drop(self, key: Key) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.adapter.nbytes
            self._report()

    def _evict(self) -> None:
        """Drop least recently used adapters without leases until under budget."""
        if self._bytes > self.max_bytes:
            for key in list(self._entries):
                if self._bytes <= self.max_bytes:
                    break
                entry = self._entries[key]
                if entry.leases == 0:
                    del self._entries[key]
                    self._bytes -= entry.adapter.nbytes
                    self.events.on_evict()
        self._report()

    def _report(self) -> None:
        self.events.on_resident(len(self._entries), self._bytes)

    # -- watching the registry ---------------------------------------------------------------

    def start(self) -> None:
        if self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="adapter-cache-watch")

    async def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass

    async def _watch(self) -> None:
        while True:
            try:
                await self.refresh()
                if not self.registry_ok:
                    log.warning("registry reachable again")
                self.registry_ok = True
            except Exception as e:  # the database may be away for a while: keep serving, retry
                if self.registry_ok:
                    log.warning("registry unreachable (%s); resident adapters keep serving", type(e).__name__)
                self.registry_ok = False
            await asyncio.sleep(self.poll_interval_s)

    async def refresh(self) -> None:
        """Apply every registry change since the last look to the resident adapters."""
        mark = await asyncio.to_thread(self.registry.watermark)
        if self._watermark is None:
            self._watermark = mark
            return
        if mark == self._watermark:
            return
        changes = await asyncio.to_thread(self.registry.changes_since, self._watermark)
        for change in changes:
            key = (change.tenant, change.adapter)
            entry = self._entries.get(key)
            if entry is None:
                if key in self._load_locks:
                    self._changed_while_loading.add(key)
                continue  # not resident: the next lease loads the current state
            if change.active_version is None:
                self._drop(key)  # deleted; in-flight leases keep their own reference
            elif change.active_version != entry.adapter.version:
                await self._swap(key, change.active_version)
        # An erased tenant's adapters leave no change rows behind: look for tenants gone.
        tenants = {t for t, _ in [*self._entries, *self._load_locks]}
        gone = await asyncio.to_thread(self.registry.missing_tenants, tenants)
        for key in [k for k in [*self._entries, *self._load_locks] if k[0] in gone]:
            self._changed_while_loading.add(key)
            self._drop(key)
        self._watermark = max([mark, *(c.seq for c in changes)])

    async def _swap(self, key: Key, version: int) -> None:
        try:
            stored = await asyncio.to_thread(self.registry.get_version, key[0], key[1], version)
            adapter = await asyncio.to_thread(self._verify, stored)
        except (AdapterFormatError, BackboneNotLoaded) as e:
            log.error("adapter %s/%s v%d not swapped in, the resident version keeps serving: %s", *key, version, e)
            return
        except NotFoundError:
            self._drop(key)  # deleted since the change was read
            return
        self._put(key, adapter)
        self._evict()
        log.info("adapter %s/%s now serves v%d", *key, version)
