"""Who is calling: the admin key or a tenant's key, from `Authorization: Bearer <key>`
(HTTP header or gRPC metadata alike).

Tenant keys are verified against their hashes in the registry and remembered for a few
seconds, so a busy tenant costs no database read per request and inference goes on while
the database is away (revocation takes effect within GRAFT_KEY_CACHE_S). A tenant acting on
another tenant's resources is told they do not exist (404), never that they are forbidden; a
tenant's key on an admin route (tenants and keys) is told it needs the admin key (403): those
routes are public in the OpenAPI description anyway.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import math
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import DBAPIError

from adapters.keys import KeyStore, hash_key
from service.errors import Forbidden, NotFound, RateLimited, Unauthenticated
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    tenant: str | None  # None: the admin

    @property
    def admin(self) -> bool:
        return self.tenant is None

    def authorize(self, tenant: str) -> None:
        """Tenant-scoped access: its own key or the admin key; anyone else sees nothing."""
        if not self.admin and self.tenant != tenant:
            raise NotFound(f"unknown tenant {tenant!r}")

    def require_admin(self) -> None:
        """Admin routes (tenants and their keys): a tenant's key gets 403 / PERMISSION_DENIED."""
        if not self.admin:
            raise Forbidden("this route needs the admin key; a tenant's key acts only on its own "
                            "adapters, jobs and predictions")


ADMIN = Principal(None)


MIN_SECRET_CHARS = 32


def load_admin_key(settings: Settings) -> str:
    """GRAFT_ADMIN_KEY, or a key generated on first start into GRAFT_HOME/admin.key (0600)."""
    return load_secret(settings.admin_key, Path(settings.home) / "admin.key", "GRAFT_ADMIN_KEY", "an admin key")


def load_signing_key(settings: Settings) -> bytes:
    """GRAFT_SIGNING_KEY, or a key generated on first start into GRAFT_HOME/signing.key (0600).
    Several replicas must share one: set GRAFT_SIGNING_KEY on each (and on the trainers)."""
    return load_secret(settings.signing_key, Path(settings.home) / "signing.key", "GRAFT_SIGNING_KEY",
                       "a signing key").encode()


def load_secret(value: str | None, path: Path, setting: str, what: str) -> str:
    """The setting, or a secret generated on first start into `path` (0600).

    The generated secret is written to a temporary file and linked into place, so a second
    worker never reads a half-written (empty) file. One shorter than 32 characters, from
    either source, is refused: the process must not run with a guessable secret.
    """
    if value:
        return check_secret(value, setting)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
            os.link(tmp, path)  # atomic, and never replaces a secret another process wrote first
            log.warning("generated %s into %s (mode 0600); set %s to choose your own", what, path.resolve(), setting)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return check_secret(path.read_text(), str(path))


def check_secret(key: str, source: str) -> str:
    """The key stripped, or a clear error if it is shorter than 32 characters."""
    key = key.strip()
    if len(key) < MIN_SECRET_CHARS:
        raise ValueError(
            f"the key from {source} has {len(key)} characters; use at least {MIN_SECRET_CHARS} "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`), or unset the setting "
            "and remove the file to have one generated"
        )
    return key


class Authenticator:
    """Who is calling. Tenant keys verified against the registry are trusted for `cache_s`;
    while the registry is unreachable, a key verified within `outage_grace_s` stays good (never
    indefinitely). Only valid keys enter the cache, so a flood of bad keys cannot push the
    good ones out; failed attempts are counted per client address, and past
    `max_failures` in `failure_window_s` that address is refused (429) before any lookup."""

    def __init__(self, keys: KeyStore, admin_key: str, *, cache_s: float = 5.0, cache_size: int = 10_000,
                 outage_grace_s: float = 300.0, max_failures: int = 20, failure_window_s: float = 60.0) -> None:
        self.keys = keys
        self._admin_hash = hash_key(admin_key)
        self.cache_s = cache_s
        self.cache_size = cache_size
        self.outage_grace_s = outage_grace_s
        self.max_failures = max_failures
        self.failure_window_s = failure_window_s
        # digest -> (tenant, verified at (monotonic), expires at (epoch seconds) or inf)
        self._cache: OrderedDict[str, tuple[str, float, float]] = OrderedDict()
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address -> (count, window start)

    async def authenticate(self, authorization: str | None, client: str | None = None) -> Principal:
        """`client`: the caller's address (HTTP peer host, gRPC peer), for failure throttling."""
        self._check_throttle(client)
        if not authorization or not authorization.lower().startswith("bearer "):
            raise Unauthenticated("send your key as `Authorization: Bearer <key>`")
        key = authorization[7:].strip()
        if not key:  # "Bearer " followed by nothing but (Unicode) whitespace
            self._failed(client)
            raise Unauthenticated("the key is empty: send `Authorization: Bearer <key>`")
        digest = hash_key(key)
        if hmac.compare_digest(digest, self._admin_hash):
            return ADMIN
        tenant = await self._tenant_of(key, digest)
        if tenant is None:
            self._failed(client)
            raise Unauthenticated("the key is not valid (unknown, malformed, expired or revoked)")
        return Principal(tenant)

    def _check_throttle(self, client: str | None) -> None:
        if client is None or self.max_failures <= 0:
            return
        count, since = self._failures.get(client, (0, 0.0))
        wait = since + self.failure_window_s - time.monotonic()
        if count >= self.max_failures and wait > 0:
            raise RateLimited(f"too many failed authentications from this address; retry in {wait:.0f}s",
                              headers={"Retry-After": str(max(1, int(wait + 0.999)))})

    def _failed(self, client: str | None) -> None:
        if client is None:
            return
        now = time.monotonic()
        count, since = self._failures.get(client, (0, now))
        if now - since > self.failure_window_s:
            count, since = 0, now
        self._failures[client] = (count + 1, since)
        self._failures.move_to_end(client)
        while len(self._failures) > self.cache_size:
            self._failures.popitem(last=False)

    def forget_tenant(self, tenant: str) -> None:
        """The tenant was erased: its keys leave this process's cache at once (other
        processes' within GRAFT_KEY_CACHE_S)."""
        for digest in [d for d, (t, _, _) in self._cache.items() if t == tenant]:
            del self._cache[digest]

    async def _tenant_of(self, key: str, digest: str) -> str | None:
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and time.time() >= cached[2]:  # expired: no cache, no grace
            self._cache.pop(digest, None)
            cached = None
        if cached is not None and now - cached[1] < self.cache_s:
            return cached[0]
        try:
            live = await asyncio.to_thread(self.keys.verify_until, key)
        except DBAPIError:
            # The database is away: a key verified recently stays good for a bounded time.
            if cached is not None and now - cached[1] < self.outage_grace_s:
                return cached[0]
            raise
        if live is None:
            self._cache.pop(digest, None)  # revoked or expired meanwhile; never cached itself
            return None
        tenant, expires = live
        self._cache[digest] = (tenant, now, expires.timestamp() if expires else math.inf)
        self._cache.move_to_end(digest)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return tenant
