"""Tenancy: tenants, their keys, who is calling, and the per-tenant rate limit."""
from __future__ import annotations

import asyncio
import time

from adapters.erasure import erase_tenant
from adapters.keys import KeyInfo, KeyStore
from adapters.registry import Registry
from service import metrics
from service.auth import Authenticator, Principal, load_admin_key
from service.limits import RedisTokenBuckets, TokenBuckets
from service.settings import Settings


class Tenancy:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.registry = registry
        self.keys = KeyStore(registry)
        self.auth = Authenticator(self.keys, load_admin_key(settings), cache_s=settings.key_cache_s,
                                  outage_grace_s=settings.key_outage_grace_s,
                                  max_failures=settings.auth_max_failures)
        self.rate: TokenBuckets | RedisTokenBuckets = (
            RedisTokenBuckets(settings.redis_url, settings.rate_limit_rps, settings.rate_limit_burst)
            if settings.redis_url else TokenBuckets(settings.rate_limit_rps, settings.rate_limit_burst)
        )

    async def authenticate(self, authorization: str | None, client: str | None = None) -> Principal:
        """The caller from `Authorization: Bearer <key>` (HTTP header or gRPC metadata);
        `client` is its address, for throttling failed attempts."""
        started = time.perf_counter()
        principal = await self.auth.authenticate(authorization, client)
        metrics.observe_stage("auth", time.perf_counter() - started)
        return principal

    async def admit(self, principal: Principal, items: int) -> None:
        """The per-tenant rate limit on inference, charged by items (the admin is not limited)."""
        if principal.tenant is not None:
            started = time.perf_counter()
            await self.rate.take(principal.tenant, float(items))
            metrics.observe_stage("admit", time.perf_counter() - started)

    async def close(self) -> None:
        if isinstance(self.rate, RedisTokenBuckets):
            await self.rate.close()

    async def create_tenant(self, tenant: str) -> str:
        """The tenant and its first key (shown once)."""
        await asyncio.to_thread(self.registry.create_tenant, tenant)
        _, key = await asyncio.to_thread(self.keys.issue, tenant)
        return key

    async def delete_tenant(self, tenant: str) -> dict[str, int]:
        """Erase the tenant and all its data (adapters/erasure.py); how many of each went.
        Its keys stop working everywhere within GRAFT_KEY_CACHE_S, its adapters within a poll."""
        removed = await asyncio.to_thread(erase_tenant, self.registry, tenant)
        self.auth.forget_tenant(tenant)
        return removed

    async def issue_key(self, tenant: str, expires_in_s: float | None = None) -> tuple[KeyInfo, str]:
        return await asyncio.to_thread(self.keys.issue, tenant, expires_in_s)

    async def revoke_key(self, tenant: str, key_id: str) -> None:
        await asyncio.to_thread(self.keys.revoke, tenant, key_id)

    async def list_keys(self, tenant: str) -> list[KeyInfo]:
        return await asyncio.to_thread(self.keys.list, tenant)
