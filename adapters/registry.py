"""The Registry: tenants, adapters, versions and active pointers (SQLAlchemy 2).

SQLite under GRAFT_HOME by default; PostgreSQL (GRAFT_DATABASE_URL) when replicas share
it. Every write runs in one transaction that first bumps a single sequence row: that row
lock serialises writers on both databases, makes promote/rollback/delete atomic, and gives
replicas a cheap watermark to poll (`watermark()`, then `changes_since()`).
Version bytes (config JSON and safetensors weights) live in the database itself, so
replicas need no shared filesystem.
"""
from __future__ import annotations

import hmac
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import (
    JSON, BigInteger, DateTime, ForeignKey, ForeignKeyConstraint, Integer, LargeBinary, String, Text,
    delete, func, select, update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from adapters.database import default_url, make_engine, normalise_url  # noqa: F401 (re-exported)
from adapters.format import AdapterConfig
from adapters.signing import sign

log = logging.getLogger(__name__)


class NotFoundError(LookupError):
    """No such tenant, adapter or version (for this tenant)."""


class ConflictError(RuntimeError):
    """The change does not fit the current state (exists already, nothing to roll back)."""


class LabelsDropped(ConflictError):
    """A promote that would stop serving labels the active version serves, not allowed."""

    def __init__(self, message: str, *, version: int, active_version: int, dropped: list[str]) -> None:
        super().__init__(message)
        self.details = {"version": version, "active_version": active_version, "dropped": dropped}


class QuotaExceeded(RuntimeError):
    """A per-tenant limit (adapters, jobs) is reached."""


class AdapterDeleted(LookupError):
    """The adapter was deleted while a version for it was being made: it is not revived."""


ANY = object()  # publish(): no expectation about the active version


@dataclass(frozen=True)
class Published:
    version: int
    activated: bool
    active_changed_to: int | None  # set when a promote/rollback meanwhile kept this version a candidate


class Base(DeclarativeBase):
    pass


def _now() -> datetime:
    return datetime.now(timezone.utc)


def utc(moment: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class TenantRow(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(63), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class AdapterRow(Base):
    __tablename__ = "adapters"
    tenant_id: Mapped[str] = mapped_column(String(63), ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    backbone: Mapped[str] = mapped_column(String(255))  # the active version's (last published while none)
    active_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Previously active versions, most recent last: rollback pops it.
    history: Mapped[list[int]] = mapped_column(JSON, default=list)
    next_version: Mapped[int] = mapped_column(Integer, default=1)
    deleted: Mapped[bool] = mapped_column(default=False)
    seq: Mapped[int] = mapped_column(BigInteger, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class VersionRow(Base):
    __tablename__ = "adapter_versions"
    __table_args__ = (
        ForeignKeyConstraint(["tenant_id", "adapter"], ["adapters.tenant_id", "adapters.name"], ondelete="CASCADE"),
    )
    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    adapter: Mapped[str] = mapped_column(String(63), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    config: Mapped[str] = mapped_column(Text)
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))
    # HMAC-SHA256 under the server's signing key: the checksum beside the bytes catches
    # corruption; this catches a row rewritten by someone with database access.
    signature: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)


class MetaRow(Base):
    __tablename__ = "registry_meta"
    key: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


@dataclass(frozen=True)
class AdapterInfo:
    tenant: str
    adapter: str
    backbone: str
    active_version: int | None
    versions: int


@dataclass(frozen=True)
class VersionInfo:
    version: int
    created_at: str
    active: bool
    config: AdapterConfig
    bytes: int = 0  # size of the weights (head, and LoRA factors)


@dataclass(frozen=True)
class StoredVersion:
    tenant: str
    adapter: str
    version: int
    config: bytes
    weights: bytes
    authentic: bool | None = None  # the signature verified (None: this registry has no key)


@dataclass(frozen=True)
class Change:
    """The state of one adapter after a write with sequence number `seq`."""

    tenant: str
    adapter: str
    active_version: int | None  # None: deleted, or nothing active
    seq: int


class Registry:
    def __init__(self, url: str, *, migrate: bool = True, signing_key: bytes | None = None) -> None:
        """`signing_key`: versions written here are signed with it and versions read are
        checked against it (the service and its trainers always pass one)."""
        self.url = normalise_url(url)
        self._signing_key = signing_key
        self.engine = make_engine(self.url)
        if migrate:
            from adapters.migrations import upgrade

            upgrade(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # -- writes (each one transaction, serialised by the sequence row) ---------------

    def create_tenant(self, tenant: str) -> None:
        with self.session.begin() as s:
            self.bump(s)
            if s.get(TenantRow, tenant) is not None:
                raise ConflictError(f"tenant {tenant!r} exists already")
            s.add(TenantRow(id=tenant))

    def create_adapter(self, tenant: str, adapter: str, config: AdapterConfig, weights: bytes,
                       *, max_adapters: int | None = None) -> int:
        """A new adapter whose version 1 (or the next number, if the name was deleted) is active."""
        with self.session.begin() as s:
            return self.publish(s, tenant, adapter, config, weights, activate=True, new_adapter=True,
                                max_adapters=max_adapters).version

    def add_version(self, tenant: str, adapter: str, config: AdapterConfig, weights: bytes, *, activate: bool) -> int:
        """One more version of an existing adapter."""
        with self.session.begin() as s:
            self._adapter(s, tenant, adapter)
            return self.publish(s, tenant, adapter, config, weights, activate=activate).version

    def publish(self, s: Session, tenant: str, adapter: str, config: AdapterConfig, weights: bytes, *,
                activate: bool, new_adapter: bool = False, max_adapters: int | None = None,
                expected_active: int | None | object = ANY) -> Published:
        """The one way a version is written: allocate its number, store it and (optionally)
        activate it, inside the caller's transaction `s`.

        An adapter that does not exist (or was deleted) is created. `new_adapter`: it must not
        exist. `expected_active`: the active version the caller decided against (None: the
        adapter did not exist then); the active version is re-read here, under the writers'
        lock, so a promote or rollback made meanwhile is never overridden (the new version is
        stored but not activated) and an adapter deleted meanwhile is never revived
        (AdapterDeleted).
        """
        seq = self.bump(s)
        self.require_tenant(s, tenant)
        row = s.get(AdapterRow, (tenant, adapter))
        live = row is not None and not row.deleted
        if new_adapter and live:
            raise ConflictError(
                f"adapter {adapter!r} exists already for tenant {tenant!r}: promote a version, or delete it first"
            )
        if expected_active is not ANY and expected_active is not None and not live:
            raise AdapterDeleted(
                f"adapter {adapter!r} of tenant {tenant!r} was deleted while version {expected_active}'s "
                "successor was being trained; nothing was published"
            )
        if not live:
            self._check_adapter_quota(s, tenant, max_adapters)
            if row is None:
                row = AdapterRow(tenant_id=tenant, name=adapter, backbone=config.backbone, next_version=1,
                                 seq=seq, history=[], deleted=False)
                s.add(row)
            row.deleted, row.history, row.active_version = False, [], None
        assert row is not None
        version = row.next_version
        row.next_version = version + 1
        row.seq = seq
        s.add(self._version_row(tenant, adapter, version, config, weights))
        changed = expected_active is not ANY and row.active_version != expected_active
        if row.active_version is None or (activate and not changed):
            self._activate(s, row, version, seq)
            return Published(version, True, None)
        return Published(version, False, row.active_version if changed else None)

    def promote(self, tenant: str, adapter: str, version: int, *, allow_dropped_labels: bool = False) -> int:
        """Make `version` active. A version that lacks labels the active one serves is refused
        (LabelsDropped, naming them) unless `allow_dropped_labels`: their requests would
        silently get another label. Checked under the writers' lock, against what serves now."""
        with self.session.begin() as s:
            seq = self.bump(s)
            row = self._adapter(s, tenant, adapter)
            target = s.get(VersionRow, (tenant, adapter, version))
            if target is None:
                raise NotFoundError(f"adapter {adapter!r} of tenant {tenant!r} has no version {version}")
            if row.active_version == version:
                return version
            if row.active_version is not None and not allow_dropped_labels:
                current = s.scalar(select(VersionRow.config).where(  # the config only, not the weights
                    VersionRow.tenant_id == tenant, VersionRow.adapter == adapter,
                    VersionRow.version == row.active_version))
                if current is not None:
                    kept = set(AdapterConfig.from_json(target.config).labels)
                    dropped = [label for label in AdapterConfig.from_json(current).labels if label not in kept]
                    if dropped:
                        raise LabelsDropped(
                            f"version {version} of adapter {adapter!r} drops the labels {dropped} that the active "
                            f"version {row.active_version} serves: their requests would get another label. Send "
                            '"allow_dropped_labels": true to promote it anyway',
                            version=version, active_version=row.active_version, dropped=dropped)
            self._activate(s, row, version, seq)
            return version

    def rollback(self, tenant: str, adapter: str) -> int:
        """Make the previously active version active again."""
        with self.session.begin() as s:
            seq = self.bump(s)
            row = self._adapter(s, tenant, adapter)
            if not row.history:
                raise ConflictError(f"adapter {adapter!r} has no earlier active version to roll back to")
            history = list(row.history)
            previous = history.pop()
            row.history = history
            self._set_active(s, row, previous, seq)
            return previous

    def delete_adapter(self, tenant: str, adapter: str) -> None:
        with self.session.begin() as s:
            seq = self.bump(s)
            row = self._adapter(s, tenant, adapter)
            s.execute(delete(VersionRow).where(VersionRow.tenant_id == tenant, VersionRow.adapter == adapter))
            row.deleted, row.active_version, row.history, row.seq = True, None, [], seq

    # -- reads -----------------------------------------------------------------------

    def tenant_exists(self, tenant: str) -> bool:
        with self.session() as s:
            return s.get(TenantRow, tenant) is not None

    def missing_tenants(self, tenants: set[str]) -> set[str]:
        """Which of `tenants` no longer exist (erased)."""
        if not tenants:
            return set()
        with self.session() as s:
            return tenants - set(s.scalars(select(TenantRow.id).where(TenantRow.id.in_(tenants))).all())

    def list_adapters(self, tenant: str) -> list[AdapterInfo]:
        with self.session() as s:
            self.require_tenant(s, tenant)
            rows = s.scalars(
                select(AdapterRow).where(AdapterRow.tenant_id == tenant, AdapterRow.deleted.is_(False)).order_by(AdapterRow.name)
            ).all()
            counts = dict(
                s.execute(
                    select(VersionRow.adapter, func.count())
                    .where(VersionRow.tenant_id == tenant)
                    .group_by(VersionRow.adapter)
                ).all()
            )
            return [AdapterInfo(tenant, r.name, r.backbone, r.active_version, counts.get(r.name, 0)) for r in rows]

    def list_versions(self, tenant: str, adapter: str) -> list[VersionInfo]:
        with self.session() as s:
            row = self._adapter(s, tenant, adapter)
            versions = s.execute(
                select(VersionRow.version, VersionRow.config, VersionRow.created_at, func.length(VersionRow.weights))
                .where(VersionRow.tenant_id == tenant, VersionRow.adapter == adapter)
                .order_by(VersionRow.version)
            ).all()
            return [
                VersionInfo(v, utc(created).isoformat(), v == row.active_version, AdapterConfig.from_json(cfg), size)
                for v, cfg, created, size in versions
            ]

    def active(self, tenant: str, adapter: str) -> tuple[StoredVersion, list[int]]:
        """The active version's bytes and the earlier active versions (most recent last)."""
        with self.session() as s:
            row = self._adapter(s, tenant, adapter)
            if row.active_version is None:
                raise NotFoundError(f"adapter {adapter!r} of tenant {tenant!r} has no active version")
            return self._stored(s, tenant, adapter, row.active_version), list(row.history)

    def get_version(self, tenant: str, adapter: str, version: int) -> StoredVersion:
        with self.session() as s:
            return self._stored(s, tenant, adapter, version)

    def watermark(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(select(MetaRow.value).where(MetaRow.key == "seq")).scalar_one())

    def changes_since(self, seq: int) -> list[Change]:
        with self.session() as s:
            rows = s.execute(
                select(AdapterRow.tenant_id, AdapterRow.name, AdapterRow.active_version, AdapterRow.deleted, AdapterRow.seq)
                .where(AdapterRow.seq > seq)
                .order_by(AdapterRow.seq)
            ).all()
            return [Change(t, a, None if deleted else v, q) for t, a, v, deleted, q in rows]

    # -- helpers ---------------------------------------------------------------------

    @staticmethod
    def lock_writers(s: Session) -> None:
        """Take the writers' lock (the sequence row) without announcing a change."""
        s.execute(update(MetaRow).where(MetaRow.key == "seq").values(value=MetaRow.value))

    @staticmethod
    def bump(s: Session) -> int:
        """Take the writers' lock (the sequence row) and return the new sequence number."""
        s.execute(update(MetaRow).where(MetaRow.key == "seq").values(value=MetaRow.value + 1))
        return int(s.execute(select(MetaRow.value).where(MetaRow.key == "seq")).scalar_one())

    @staticmethod
    def _check_adapter_quota(s: Session, tenant: str, max_adapters: int | None) -> None:
        if max_adapters is None:
            return
        count = s.scalar(select(func.count()).select_from(AdapterRow)
                         .where(AdapterRow.tenant_id == tenant, AdapterRow.deleted.is_(False)))
        if count >= max_adapters:
            raise QuotaExceeded(
                f"tenant {tenant!r} has {count} adapters, the limit (GRAFT_MAX_ADAPTERS_PER_TENANT): delete one first"
            )

    @staticmethod
    def require_tenant(s: Session, tenant: str) -> TenantRow:
        row = s.get(TenantRow, tenant)
        if row is None:
            raise NotFoundError(f"unknown tenant {tenant!r}")
        return row

    def _adapter(self, s: Session, tenant: str, adapter: str) -> AdapterRow:
        self.require_tenant(s, tenant)
        row = s.get(AdapterRow, (tenant, adapter))
        if row is None or row.deleted:
            raise NotFoundError(f"tenant {tenant!r} has no adapter {adapter!r}")
        return row

    @staticmethod
    def _activate(s: Session, row: AdapterRow, version: int, seq: int) -> None:
        if row.active_version is not None:
            row.history = [*row.history, row.active_version]
        Registry._set_active(s, row, version, seq)

    @staticmethod
    def _set_active(s: Session, row: AdapterRow, version: int, seq: int) -> None:
        config = s.scalar(select(VersionRow.config).where(  # the config only, not the weights
            VersionRow.tenant_id == row.tenant_id, VersionRow.adapter == row.name, VersionRow.version == version))
        if config is not None:
            row.backbone = AdapterConfig.from_json(config).backbone
        row.active_version = version
        row.seq = seq

    def _version_row(self, tenant: str, adapter: str, version: int, config: AdapterConfig,
                     weights: bytes) -> VersionRow:
        text = config.to_json().decode()
        return VersionRow(
            tenant_id=tenant, adapter=adapter, version=version, config=text, weights=weights,
            sha256=config.weights_sha256, signature=self._sign(tenant, adapter, version, text.encode(), weights),
        )

    def _sign(self, tenant: str, adapter: str, version: int, config: bytes, weights: bytes) -> str | None:
        return None if self._signing_key is None else sign(self._signing_key, tenant, adapter, version, config, weights)

    def _stored(self, s: Session, tenant: str, adapter: str, version: int) -> StoredVersion:
        self._adapter(s, tenant, adapter)
        row = s.get(VersionRow, (tenant, adapter, version))
        if row is None:
            raise NotFoundError(f"adapter {adapter!r} of tenant {tenant!r} has no version {version}")
        config, weights = row.config.encode(), bytes(row.weights)
        expected = self._sign(tenant, adapter, version, config, weights)
        authentic = None if expected is None else hmac.compare_digest(row.signature or "", expected)
        return StoredVersion(tenant, adapter, version, config, weights, authentic)

    def sign_unsigned(self) -> int:
        """Sign the versions written before signing existed (an operator's one-off, for a
        database they trust: `python -m service.cli sign-versions`). Returns how many."""
        if self._signing_key is None:
            raise ValueError("this registry has no signing key")
        with self.session.begin() as s:
            rows = s.scalars(select(VersionRow).where(VersionRow.signature.is_(None))).all()
            for row in rows:
                row.signature = self._sign(row.tenant_id, row.adapter, row.version, row.config.encode(),
                                           bytes(row.weights))
            return len(rows)
