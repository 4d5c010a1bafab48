"""Tenant API keys: issued, rotated, revoked; stored as SHA-256 hashes only.

A key reads `graft_<id>_<secret>`: the id finds the row, the hash of the whole key is
compared in constant time. Keys are 256-bit random, so a fast hash is enough (no password
stretching needed); the plain key is shown once, when issued.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import DateTime, ForeignKey, String, select
from sqlalchemy.orm import Mapped, mapped_column

from adapters.registry import Base, NotFoundError, Registry, utc

PREFIX = "graft_"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(63), ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


@dataclass(frozen=True)
class KeyInfo:
    key_id: str
    tenant: str
    created_at: str
    revoked: bool
    expires_at: str | None = None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The public id inside a well-formed key, or None."""
    if not key.startswith(PREFIX):
        return None
    parts = key[len(PREFIX) :].split("_", 1)
    return parts[0] if len(parts) == 2 and 0 < len(parts[0]) <= 16 else None


class KeyStore:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.session = registry.session

    def issue(self, tenant: str, expires_in_s: float | None = None) -> tuple[KeyInfo, str]:
        """A new key for the tenant (valid for `expires_in_s`, or until revoked); the plain
        key is returned once and never stored."""
        key_id = secrets.token_hex(6)
        key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        expires = _now() + timedelta(seconds=expires_in_s) if expires_in_s else None
        with self.session.begin() as s:
            Registry.lock_writers(s)  # not while the tenant is being erased
            Registry.require_tenant(s, tenant)
            row = ApiKeyRow(id=key_id, tenant_id=tenant, key_hash=hash_key(key), expires_at=expires)
            s.add(row)
            s.flush()
            return _info(row), key

    def revoke(self, tenant: str, key_id: str) -> None:
        with self.session.begin() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None or row.tenant_id != tenant:
                raise NotFoundError(f"tenant {tenant!r} has no key {key_id!r}")
            if row.revoked_at is None:
                row.revoked_at = _now()

    def list(self, tenant: str) -> list[KeyInfo]:
        with self.session() as s:
            Registry.require_tenant(s, tenant)
            rows = s.scalars(select(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant).order_by(ApiKeyRow.created_at)).all()
            return [_info(r) for r in rows]

    def verify(self, key: str) -> str | None:
        """The tenant a live key belongs to, or None."""
        live = self.verify_until(key)
        return live[0] if live else None

    def verify_until(self, key: str) -> tuple[str, datetime | None] | None:
        """(tenant, expiry or None) of a live key (not revoked, not expired), or None."""
        key_id = key_id_of(key)
        if key_id is None:
            return None
        with self.session() as s:
            row = s.get(ApiKeyRow, key_id)
            expired = row is not None and row.expires_at is not None and utc(row.expires_at) <= _now()
            if row is None or row.revoked_at is not None or expired:
                hmac.compare_digest(hash_key(key), "0" * 64)  # same work whether or not the id exists
                return None
            if not hmac.compare_digest(hash_key(key), row.key_hash):
                return None
            return row.tenant_id, utc(row.expires_at) if row.expires_at else None


def _info(row: ApiKeyRow) -> KeyInfo:
    return KeyInfo(row.id, row.tenant_id, utc(row.created_at).isoformat(), row.revoked_at is not None,
                   utc(row.expires_at).isoformat() if row.expires_at else None)
