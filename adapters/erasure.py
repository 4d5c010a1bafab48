"""Erasing a tenant: everything Graft holds for it, in one transaction.

Keys, adapters, versions, fine-tune jobs with their examples and events, and the tenant's
cached vectors and hidden states go; the tenant itself goes last. The writers' lock is
taken first (as `JobQueue.publish` and `JobQueue.submit` do), so a job that finishes
meanwhile either published before (and its version is erased here) or finds its job gone
and publishes nothing. Every replica's adapter cache drops the tenant's adapters at its
next registry poll (`AdapterCache.refresh` looks for tenants that disappeared).
"""
from __future__ import annotations

import logging

from sqlalchemy import delete, func, select

from adapters.jobs import EmbeddingRow, HiddenStateRow, JobEventRow, JobExamplesRow, JobRow
from adapters.keys import ApiKeyRow
from adapters.registry import AdapterRow, Registry, TenantRow, VersionRow

log = logging.getLogger(__name__)


def erase_tenant(registry: Registry, tenant: str) -> dict[str, int]:
    """Delete the tenant and all its data; returns how many of each were removed.
    NotFoundError for an unknown tenant."""
    with registry.session.begin() as s:
        Registry.bump(s)  # the writers' lock; and replicas' caches look again
        Registry.require_tenant(s, tenant)
        jobs = select(JobRow.id).where(JobRow.tenant_id == tenant).scalar_subquery()
        running = s.scalar(select(JobRow.id).where(JobRow.tenant_id == tenant, JobRow.status == "running").limit(1))
        removed = {
            "keys": s.execute(delete(ApiKeyRow).where(ApiKeyRow.tenant_id == tenant)).rowcount,
            "adapters": s.scalar(select(func.count()).select_from(AdapterRow).where(
                AdapterRow.tenant_id == tenant, AdapterRow.deleted.is_(False))),
            "versions": s.execute(delete(VersionRow).where(VersionRow.tenant_id == tenant)).rowcount,
            "jobs": 0,
            "job_examples": s.execute(delete(JobExamplesRow).where(JobExamplesRow.job_id.in_(jobs))).rowcount,
            "job_events": s.execute(delete(JobEventRow).where(JobEventRow.job_id.in_(jobs))).rowcount,
            "cached_vectors": s.execute(delete(EmbeddingRow).where(EmbeddingRow.tenant_id == tenant)).rowcount,
            "cached_hidden_states": s.execute(delete(HiddenStateRow).where(
                HiddenStateRow.tenant_id == tenant)).rowcount,
        }
        removed["jobs"] = s.execute(delete(JobRow).where(JobRow.tenant_id == tenant)).rowcount
        s.execute(delete(AdapterRow).where(AdapterRow.tenant_id == tenant))
        s.execute(delete(TenantRow).where(TenantRow.id == tenant))
    log.info("tenant %s erased%s: %s", tenant, " (a running job was stopped)" if running else "", removed)
    return removed

