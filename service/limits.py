"""Per-tenant token buckets for inference: a steady rate with room for bursts.

Kept in process memory: each replica enforces the rate on the traffic it receives.
"""
from __future__ import annotations

import time
from collections import OrderedDict

from service.errors import RateLimited


class TokenBuckets:
    def __init__(self, rate: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def take(self, key: str, cost: float = 1.0) -> None:
        """Spend `cost` tokens of this key's bucket, or raise 429 with when to retry."""
        if self.rate <= 0:
            return
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < cost:
            wait = (cost - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            raise RateLimited(
                f"rate limit of {self.rate:g} requests/s (burst {self.burst:g}) reached; retry in {wait:.2f}s",
                {"retry_after_s": round(wait, 3)},
                headers={"Retry-After": str(max(1, int(wait + 0.999)))},
            )
        self._buckets[key] = (tokens - cost, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
