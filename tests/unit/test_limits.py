"""Rate limits charged by items; in process, or shared through Redis (127.0.0.1:6379)."""
from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from service.errors import RateLimited
from service.limits import RedisTokenBuckets, TokenBuckets

REDIS_URL = os.environ.get("GRAFT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def test_a_request_costs_its_items():
    async def main():
        buckets = TokenBuckets(rate=0.001, burst=10)
        await buckets.take("t", 8)
        with pytest.raises(RateLimited) as refused:
            await buckets.take("t", 4)  # 8 + 4 > 10: an item count, not a request count
        assert refused.value.headers["Retry-After"]
        await buckets.take("other", 10)
        await TokenBuckets(rate=0.001, burst=10).take("t", 256)  # larger than the burst: drains it, once

    asyncio.run(main())


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.exceptions.ConnectionError as e:
        if os.environ.get("CI"):
            raise AssertionError(f"Redis unreachable at {REDIS_URL} (.ci/run starts it): {e}") from e
        pytest.skip(f"Redis unreachable at {REDIS_URL}")


def test_two_processes_share_one_bucket_through_redis():
    """Two limiters (as two worker processes) on one Redis: together they admit the burst,
    not a burst each."""
    _redis_or_skip()
    tenant = f"t-{uuid.uuid4().hex[:8]}"

    async def main() -> int:
        a = RedisTokenBuckets(REDIS_URL, rate=0.01, burst=10)
        b = RedisTokenBuckets(REDIS_URL, rate=0.01, burst=10)
        admitted = 0
        for i in range(20):
            try:
                await (a if i % 2 else b).take(tenant, 1)
                admitted += 1
            except RateLimited:
                pass
        await a.close()
        await b.close()
        return admitted

    assert asyncio.run(main()) == 10


def test_an_unreachable_redis_lets_requests_through():
    async def main():
        limiter = RedisTokenBuckets("redis://127.0.0.1:1/0", rate=0.01, burst=1)
        for _ in range(3):
            await limiter.take("t", 1)  # no exception: a limiter must not take serving down
        await limiter.close()

    asyncio.run(main())
