"""Durable fine-tune jobs in the registry database: a queue that survives restarts.

Workers claim jobs with a lease (`SELECT … FOR UPDATE SKIP LOCKED` on PostgreSQL, the
same compare-and-set UPDATE on SQLite), renew it while they work, and publish the trained
version and the job's success in one transaction that first checks they still hold the
lease. A worker that dies stops renewing; once its lease expires the job is retried, or
failed after its last attempt, so no job stays "running" forever and no job publishes
twice.
"""
from __future__ import annotations

import hashlib
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    JSON, DateTime, Float, Integer, LargeBinary, String, Text, delete, func, select, text, update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from adapters.format import AdapterConfig
from adapters.registry import Base, NotFoundError, QuotaExceeded, Registry, utc

log = logging.getLogger(__name__)

INSERT_CHUNK = 5000  # rows per multi-row INSERT
HIDDEN_INSERT_CHUNK = 200  # hidden-state rows (tens of KB each) per INSERT

def _now() -> datetime:
    return datetime.now(timezone.utc)


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(63), index=True)
    adapter: Mapped[str] = mapped_column(String(63))
    backbone: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    promoted: Mapped[bool] = mapped_column(default=False)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(default=False)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class JobExamplesRow(Base):
    """A job's training examples, apart from its row: status polls, lists, heartbeats and
    events never read them; a worker reads them once, when it claims the job. Deleted when
    the job ends unless the tenant keeps them (`params.keep_examples`), then after
    GRAFT_KEPT_EXAMPLES_DAYS."""

    __tablename__ = "job_examples"
    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)  # jobs.id (deleted with it, explicitly)
    tenant_id: Mapped[str] = mapped_column(String(63), index=True)
    examples: Mapped[list[Any]] = mapped_column(JSON)


class JobEventRow(Base):
    """Events in insertion order: a database sequence, so concurrent writers (the worker, a
    cancel request) never compete for the same number."""

    __tablename__ = "job_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(36), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class EmbeddingRow(Base):
    """Embedding cache: a tenant retraining on the same texts skips the backbone. Keyed per
    tenant, so how fast a job embeds never tells one tenant what another trained on; rows
    older than GRAFT_EMBEDDING_CACHE_DAYS are swept."""

    __tablename__ = "embedding_cache"
    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(32), primary_key=True)
    text_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)


class HiddenStateRow(Base):
    """Hidden-state cache: what the serving lower graph computed for a text (float16 bytes,
    `tokens` x hidden), so a tenant's next deep-adapter job on it skips the graph. Keyed per
    tenant and by `TextBackbone.hidden_key` (weights, split layer, lower graph file and
    precision); swept with the embedding cache (GRAFT_EMBEDDING_CACHE_DAYS)."""

    __tablename__ = "hidden_state_cache"
    tenant_id: Mapped[str] = mapped_column(String(63), primary_key=True)
    state_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    text_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    tokens: Mapped[int] = mapped_column(Integer)
    states: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now, index=True)


@dataclass(frozen=True)
class Job:
    id: str
    tenant: str
    adapter: str
    backbone: str
    status: str
    params: dict[str, Any]
    progress: float
    metrics: dict[str, Any] | None
    version: int | None
    promoted: bool
    error_code: str | None
    error_message: str | None
    attempts: int
    created_at: str
    finished_at: str | None

    def public(self) -> dict[str, Any]:
        error = {"code": self.error_code, "message": self.error_message} if self.error_code else None
        return {
            "job_id": self.id, "tenant": self.tenant, "adapter": self.adapter, "backbone": self.backbone,
            "status": self.status, "progress": round(self.progress, 4), "metrics": self.metrics,
            "version": self.version, "promoted": self.promoted, "error": error, "attempts": self.attempts,
            "created_at": self.created_at, "finished_at": self.finished_at,
        }


@dataclass(frozen=True)
class Claimed:
    job: Job
    examples: list[dict[str, str]]
    owner: str


class LeaseLost(RuntimeError):
    """This worker no longer holds the job (its lease expired and it was retried or failed)."""


def _job(row: JobRow) -> Job:
    return Job(
        row.id, row.tenant_id, row.adapter, row.backbone, row.status, row.params, row.progress, row.metrics,
        row.version, row.promoted, row.error_code, row.error_message, row.attempts,
        utc(row.created_at).isoformat(), utc(row.finished_at).isoformat() if row.finished_at else None,
    )


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class JobQueue:
    def __init__(self, registry: Registry, *, lease_s: float = 30.0, max_attempts: int = 2) -> None:
        self.registry = registry
        self.lease_s = lease_s
        self.max_attempts = max_attempts
        self.session = registry.session

    # -- API side ----------------------------------------------------------------------

    def submit(self, tenant: str, adapter: str, backbone: str, examples: list[dict[str, str]],
               params: dict[str, Any], *, max_queued: int, max_per_tenant: int | None = None) -> Job:
        with self.session.begin() as s:
            Registry.lock_writers(s)  # count and insert as one: concurrent submits cannot both fit
            Registry.require_tenant(s, tenant)
            queued = s.scalar(select(func.count()).select_from(JobRow).where(JobRow.status == "queued"))
            if queued >= max_queued:
                raise QueueFull(f"{queued} jobs are waiting; retry later")
            if max_per_tenant is not None:
                active = s.scalar(select(func.count()).select_from(JobRow).where(
                    JobRow.tenant_id == tenant, JobRow.status.in_(("queued", "running"))))
                if active >= max_per_tenant:
                    raise QueueFull(f"tenant {tenant!r} has {active} jobs queued or running, the limit "
                                    "(GRAFT_MAX_TENANT_JOBS); wait for one to finish")
            row = JobRow(id=str(uuid.uuid4()), tenant_id=tenant, adapter=adapter, backbone=backbone, status="queued",
                         params=params, progress=0.0, attempts=0, cancel_requested=False, promoted=False)
            s.add(row)
            s.flush()
            s.add(JobExamplesRow(job_id=row.id, tenant_id=tenant, examples=examples))
            self._event(s, row.id, "queued", {"examples": len(examples)})
            return _job(row)

    def get(self, job_id: str, tenant: str | None = None) -> Job:
        with self.session() as s:
            return _job(self._row(s, job_id, tenant))

    def list(self, tenant: str, limit: int = 100) -> list[Job]:
        with self.session() as s:
            Registry.require_tenant(s, tenant)
            rows = s.scalars(select(JobRow).where(JobRow.tenant_id == tenant)
                             .order_by(JobRow.created_at.desc()).limit(limit)).all()
            return [_job(r) for r in rows]

    def events(self, job_id: str, tenant: str | None = None) -> list[dict[str, Any]]:
        with self.session() as s:
            self._row(s, job_id, tenant)
            rows = s.scalars(select(JobEventRow).where(JobEventRow.job_id == job_id).order_by(JobEventRow.id)).all()
            return [{"n": n, "at": utc(r.at).isoformat(), "kind": r.kind, **r.data} for n, r in enumerate(rows, 1)]

    def cancel(self, job_id: str, tenant: str | None = None) -> Job:
        """A queued job is cancelled at once; a running one at its worker's next check."""
        with self.session.begin() as s:
            row = self._row(s, job_id, tenant, lock=True)
            if row.status == "queued":
                self._end(s, row, "cancelled")
                self._event(s, job_id, "cancelled", {"by": "request"})
            elif row.status == "running":
                row.cancel_requested = True
                self._event(s, job_id, "cancel_requested", {})
            return _job(row)

    def cancel_for_adapter(self, tenant: str, adapter: str) -> int:
        """The adapter was deleted: its queued jobs are cancelled (run later, they would create
        it anew) and its running ones asked to stop. Returns how many."""
        with self.session.begin() as s:
            rows = s.scalars(select(JobRow).where(
                JobRow.tenant_id == tenant, JobRow.adapter == adapter, JobRow.status.in_(("queued", "running"))
            ).with_for_update()).all()
            for row in rows:
                if row.status == "queued":
                    self._end(s, row, "cancelled")
                    self._event(s, row.id, "cancelled", {"by": "adapter_deleted"})
                else:
                    row.cancel_requested = True
                    self._event(s, row.id, "cancel_requested", {"by": "adapter_deleted"})
            return len(rows)

    def counts(self) -> dict[str, int]:
        """Jobs per status, across every replica sharing the registry."""
        with self.session() as s:
            return dict(s.execute(select(JobRow.status, func.count()).group_by(JobRow.status)).all())

    def queued(self) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(JobRow).where(JobRow.status == "queued")))

    # -- worker side -------------------------------------------------------------------

    def claim(self, owner: str) -> Claimed | None:
        """Take the oldest claimable job: queued, or running with an expired lease."""
        self.expire()
        with self.session.begin() as s:
            candidate = (
                select(JobRow.id)
                .where(JobRow.status == "queued")
                .order_by(JobRow.created_at)
                .limit(1)
                .with_for_update(skip_locked=True)
            )
            job_id = s.scalar(candidate)
            if job_id is None:
                return None
            now = self._db_now(s)
            claimed = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == "queued")
                .values(status="running", lease_owner=owner, lease_expires_at=now + timedelta(seconds=self.lease_s),
                        attempts=JobRow.attempts + 1, started_at=now)
            ).rowcount
            if claimed != 1:
                return None  # someone else took it between our read and our write
            row = s.get(JobRow, job_id)
            assert row is not None
            s.refresh(row)
            # The worker's host:pid stays in the log, not in events a tenant reads.
            log.info("job %s: attempt %d claimed by %s", job_id, row.attempts, owner)
            self._event(s, job_id, "started", {"attempt": row.attempts})
            examples = s.scalar(select(JobExamplesRow.examples).where(JobExamplesRow.job_id == job_id))
            return Claimed(_job(row), list(examples or []), owner)

    def expire(self) -> None:
        """Jobs whose worker stopped renewing: retried, or failed after the last attempt."""
        with self.session.begin() as s:
            rows = s.scalars(
                select(JobRow).where(JobRow.status == "running", JobRow.lease_expires_at < self._db_now(s))
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                log.warning("job %s: worker %s lost its lease (attempt %d)", row.id, row.lease_owner, row.attempts)
                lost = {"attempt": row.attempts}
                if row.cancel_requested:
                    self._end(s, row, "cancelled")
                    self._event(s, row.id, "cancelled", lost)
                elif row.attempts >= self.max_attempts:
                    self._end(s, row, "failed")
                    row.error_code = "worker_lost"
                    row.error_message = f"the worker stopped during attempt {row.attempts} of {self.max_attempts}"
                    self._event(s, row.id, "failed", {**lost, "reason": "worker_lost"})
                else:
                    row.status, row.progress = "queued", 0.0
                    self._event(s, row.id, "requeued", {**lost, "reason": "worker_lost"})
                row.lease_owner, row.lease_expires_at = None, None

    def heartbeat(self, claim: Claimed, progress: float | None = None) -> bool:
        """Renew the lease; returns whether cancellation was requested. LeaseLost if not ours.
        Touches only the lease columns: the job's examples are never read here."""
        with self.session.begin() as s:
            values: dict[str, Any] = {"lease_expires_at": self._db_now(s) + timedelta(seconds=self.lease_s)}
            if progress is not None:
                values["progress"] = progress
            self._take(s, claim, **values)
            return bool(s.scalar(select(JobRow.cancel_requested).where(JobRow.id == claim.job.id)))

    def event(self, claim: Claimed, kind: str, data: dict[str, Any]) -> None:
        with self.session.begin() as s:
            self._take(s, claim)
            self._event(s, claim.job.id, kind, data)

    def finish(self, claim: Claimed, status: str, *, error_code: str | None = None,
               error_message: str | None = None) -> None:
        with self.session.begin() as s:
            row = self._owned(s, claim)
            self._end(s, row, status)
            row.error_code, row.error_message = error_code, error_message
            row.lease_owner, row.lease_expires_at = None, None
            self._event(s, row.id, status, {"error": error_code} if error_code else {})

    def publish(self, claim: Claimed, config: AdapterConfig, weights: bytes, *, promote: bool,
                metrics: dict[str, Any], decision: dict[str, Any], expected_active: int | None,
                max_adapters: int | None = None) -> int:
        """Register the version, promote it (or not) and succeed the job: all or nothing.

        `expected_active` is the active version the promotion decision was made against
        (None: the adapter did not exist). If a promote or rollback changed it while the job
        trained, the version stays a candidate; if the adapter was deleted, nothing is
        published and AdapterDeleted is raised (the caller fails the job).
        """
        with self.session.begin() as s:
            # The writers' lock before the job's row, as every writer that takes both: a
            # tenant's erasure (adapters/erasure.py) takes them in this order too.
            Registry.lock_writers(s)
            row = self._owned(s, claim)
            published = self.registry.publish(s, row.tenant_id, row.adapter, config, weights, activate=promote,
                                              max_adapters=max_adapters, expected_active=expected_active)
            version = published.version
            if published.active_changed_to is not None and promote:
                decision = {"decision": "candidate", "reason": (
                    f"the active version changed to {published.active_changed_to} while this job trained "
                    f"(it was {expected_active}): kept as a candidate; {decision.get('reason', '')}").rstrip("; ")}
            row.promoted = published.activated
            row.version, row.metrics, row.progress = version, metrics, 1.0
            self._end(s, row, "succeeded")
            row.lease_owner, row.lease_expires_at = None, None
            self._event(s, row.id, "promotion", {**decision, "version": version, "promoted": row.promoted})
            self._event(s, row.id, "succeeded", {"version": version})
            return version

    # -- embedding and hidden-state caches (per tenant) and retention ------------------------

    def embedding_cache(self, tenant: str) -> TenantEmbeddings:
        """The pipeline's embedding (and hidden-state) cache for one tenant's job."""
        return TenantEmbeddings(self, tenant)

    def cached_embeddings(self, tenant: str, fingerprint: str, texts: list[str]) -> dict[str, bytes]:
        keys = {text_key(t): t for t in texts}
        found: dict[str, bytes] = {}
        with self.session() as s:
            items = list(keys)
            for i in range(0, len(items), 500):
                rows = s.execute(select(EmbeddingRow.text_sha256, EmbeddingRow.vector).where(
                    EmbeddingRow.tenant_id == tenant, EmbeddingRow.fingerprint == fingerprint,
                    EmbeddingRow.text_sha256.in_(items[i : i + 500]))).all()
                found.update({keys[k]: bytes(v) for k, v in rows})
        return found

    def store_embeddings(self, tenant: str, fingerprint: str, vectors: dict[str, bytes]) -> None:
        """Insert, leaving rows another worker wrote meanwhile (same text, same vector)."""
        if not vectors:
            return
        with self.session.begin() as s:
            if s.bind.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            now = _now()
            rows = [{"tenant_id": tenant, "fingerprint": fingerprint, "text_sha256": text_key(t), "vector": v,
                     "created_at": now} for t, v in vectors.items()]
            # One statement per chunk: PostgreSQL takes at most 65,535 bind parameters (5 a row).
            for i in range(0, len(rows), INSERT_CHUNK):
                s.execute(insert(EmbeddingRow).values(rows[i : i + INSERT_CHUNK]).on_conflict_do_nothing())

    def cached_hidden_states(self, tenant: str, key: str, texts: list[str]) -> dict[str, tuple[int, bytes]]:
        """Each cached text's (token count, float16 bytes) under `key` (TextBackbone.hidden_key)."""
        keys = {text_key(t): t for t in texts}
        found: dict[str, tuple[int, bytes]] = {}
        with self.session() as s:
            items = list(keys)
            for i in range(0, len(items), 500):
                rows = s.execute(select(HiddenStateRow.text_sha256, HiddenStateRow.tokens, HiddenStateRow.states).where(
                    HiddenStateRow.tenant_id == tenant, HiddenStateRow.state_key == key,
                    HiddenStateRow.text_sha256.in_(items[i : i + 500]))).all()
                found.update({keys[k]: (int(n), bytes(v)) for k, n, v in rows})
        return found

    def store_hidden_states(self, tenant: str, key: str, states: dict[str, tuple[int, bytes]]) -> None:
        """Insert, leaving rows another worker wrote meanwhile (as store_embeddings)."""
        if not states:
            return
        with self.session.begin() as s:
            if s.bind.dialect.name == "postgresql":
                from sqlalchemy.dialects.postgresql import insert
            else:
                from sqlalchemy.dialects.sqlite import insert
            now = _now()
            rows = [{"tenant_id": tenant, "state_key": key, "text_sha256": text_key(t), "tokens": n, "states": v,
                     "created_at": now} for t, (n, v) in states.items()]
            # Rows are tens of KB each: statements of a few MB, not one of hundreds.
            for i in range(0, len(rows), HIDDEN_INSERT_CHUNK):
                s.execute(insert(HiddenStateRow).values(rows[i : i + HIDDEN_INSERT_CHUNK]).on_conflict_do_nothing())

    def sweep(self, *, embeddings_days: float, kept_examples_days: float) -> dict[str, int]:
        """Retention: cached vectors and hidden states older than `embeddings_days` and kept
        examples of jobs that ended more than `kept_examples_days` ago are deleted (0 = keep
        forever)."""
        removed = {"cached_vectors": 0, "cached_hidden_states": 0, "kept_examples": 0}
        with self.session.begin() as s:
            now = self._db_now(s)
            if embeddings_days > 0:
                removed["cached_vectors"] = s.execute(delete(EmbeddingRow).where(
                    EmbeddingRow.created_at < now - timedelta(days=embeddings_days))).rowcount
                removed["cached_hidden_states"] = s.execute(delete(HiddenStateRow).where(
                    HiddenStateRow.created_at < now - timedelta(days=embeddings_days))).rowcount
            if kept_examples_days > 0:
                ended = select(JobRow.id).where(JobRow.finished_at < now - timedelta(days=kept_examples_days))
                removed["kept_examples"] = s.execute(delete(JobExamplesRow).where(
                    JobExamplesRow.job_id.in_(ended))).rowcount
        if any(removed.values()):
            log.info("retention sweep removed %s", removed)
        return removed

    # -- helpers -------------------------------------------------------------------------

    @staticmethod
    def _row(s: Session, job_id: str, tenant: str | None, lock: bool = False) -> JobRow:
        query = select(JobRow).where(JobRow.id == job_id)
        if lock:
            query = query.with_for_update()
        row = s.scalar(query)
        if row is None or (tenant is not None and row.tenant_id != tenant):
            raise NotFoundError(f"no job {job_id!r}")
        return row

    @staticmethod
    def _take(s: Session, claim: Claimed, **values: Any) -> None:
        """Write-lock the claimed job's row (setting `values`) if the claim still holds:
        ownership is the WHERE of the UPDATE (atomic on SQLite too, where SELECT ... FOR
        UPDATE locks nothing). LeaseLost otherwise."""
        taken = s.execute(
            update(JobRow)
            .where(JobRow.id == claim.job.id, JobRow.status == "running", JobRow.lease_owner == claim.owner)
            .values(**(values or {"lease_owner": JobRow.lease_owner}))
        ).rowcount
        if taken != 1:
            raise LeaseLost(f"job {claim.job.id} is no longer held by {claim.owner}")

    @classmethod
    def _owned(cls, s: Session, claim: Claimed) -> JobRow:
        """The claimed job's row, write-locked, if the claim still holds."""
        cls._take(s, claim)
        row = s.get(JobRow, claim.job.id)
        assert row is not None
        return row

    @staticmethod
    def _db_now(s: Session) -> datetime:
        """The database's clock (UTC): every worker computes and compares leases with it, so
        a worker whose own clock is off neither steals nor keeps a lease it should not."""
        if s.bind.dialect.name == "sqlite":
            value = s.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
            return datetime.fromisoformat(value).replace(tzinfo=timezone.utc)
        return utc(s.scalar(select(func.now())))

    @staticmethod
    def _end(s: Session, row: JobRow, status: str) -> None:
        """The job is over: its examples go too, unless the tenant asked to keep them."""
        row.status, row.finished_at = status, _now()
        if not row.params.get("keep_examples"):
            s.execute(delete(JobExamplesRow).where(JobExamplesRow.job_id == row.id))

    @staticmethod
    def _event(s: Session, job_id: str, kind: str, data: dict[str, Any]) -> None:
        s.add(JobEventRow(job_id=job_id, kind=kind, data=data))


@dataclass(frozen=True)
class TenantEmbeddings:
    """One tenant's view of the embedding and hidden-state caches (the pipeline's
    EmbeddingCache)."""

    queue: JobQueue
    tenant: str

    def cached_embeddings(self, fingerprint: str, keys: list[str]) -> dict[str, bytes]:
        return self.queue.cached_embeddings(self.tenant, fingerprint, keys)

    def store_embeddings(self, fingerprint: str, vectors: dict[str, bytes]) -> None:
        self.queue.store_embeddings(self.tenant, fingerprint, vectors)

    def cached_hidden_states(self, key: str, keys: list[str]) -> dict[str, tuple[int, bytes]]:
        return self.queue.cached_hidden_states(self.tenant, key, keys)

    def store_hidden_states(self, key: str, states: dict[str, tuple[int, bytes]]) -> None:
        self.queue.store_hidden_states(self.tenant, key, states)


class QueueFull(QuotaExceeded):
    """Too many jobs waiting: the client should retry later (429 with Retry-After)."""


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
