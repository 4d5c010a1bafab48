"""Per-tenant token buckets for inference, charged by items: a steady rate with room for
bursts. A request of n items costs n tokens (capped at the burst, so any allowed request
can pass once the bucket is full).

Where they live: with GRAFT_REDIS_URL, in Redis (one atomic Lua script per request, Redis's
own clock), so the limit holds per tenant across every worker process and replica; without
it, in process memory, so each worker process enforces it on the traffic it receives. If
Redis is unreachable, requests are let through (logged): a limiter must not take the
service down with it.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from service.errors import RateLimited

log = logging.getLogger(__name__)


def _refused(rate: float, burst: float, wait: float) -> RateLimited:
    return RateLimited(
        f"rate limit of {rate:g} items/s (burst {burst:g}) reached; retry in {wait:.2f}s",
        {"retry_after_s": round(wait, 3)},
        headers={"Retry-After": str(max(1, int(wait + 0.999)))},
    )


class TokenBuckets:
    """In process memory (one worker process)."""

    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    async def take(self, key: str, cost: float = 1.0) -> None:
        """Spend `cost` tokens of this key's bucket, or raise 429 with when to retry."""
        if self.rate <= 0:
            return
        cost = min(cost, self.burst)
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < cost:
            self._buckets[key] = (tokens, now)
            raise _refused(self.rate, self.burst, (cost - tokens) / self.rate)
        self._buckets[key] = (tokens - cost, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)


# KEYS[1]: the bucket; ARGV: rate, burst, cost. Returns the wait in seconds ("0": admitted).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(b[1]) or burst
local at = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens < cost then wait = (cost - tokens) / rate else tokens = tokens - cost end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 1)
return tostring(wait)
"""


class RedisTokenBuckets:
    """Shared by every process that points at the same Redis."""

    def __init__(self, url: str, rate: float, burst: float, prefix: str = "graft:rate:") -> None:
        import redis.asyncio as aioredis

        self.rate = rate
        self.burst = burst
        self.prefix = prefix
        self._redis: Any = aioredis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        self._script = self._redis.register_script(_TAKE)
        self._warned = False

    async def take(self, key: str, cost: float = 1.0) -> None:
        if self.rate <= 0:
            return
        cost = min(cost, self.burst)
        try:
            wait = float(await self._script(keys=[self.prefix + key], args=[self.rate, self.burst, cost]))
            self._warned = False
        except Exception as e:  # Redis away: serve rather than fail every request
            if not self._warned:
                log.warning("rate limiter's Redis unreachable (%s); requests pass unlimited meanwhile",
                            type(e).__name__)
                self._warned = True
            return
        if wait > 0:
            raise _refused(self.rate, self.burst, wait)

    async def close(self) -> None:
        await self._redis.aclose()
