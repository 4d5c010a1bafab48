"""Job examples stored apart from the job row; the embedding cache keyed per tenant.

A status poll, a job list, a heartbeat or an event no longer reads a job's examples (tens
of MB for image jobs): they live in `job_examples`, read once, when a worker claims the
job, and deleted when the job ends unless the tenant keeps them. The embedding cache is
rebuilt with the tenant in its key (timing no longer tells one tenant what another
trained on); its old rows, shared by all tenants, are dropped: they are only a cache.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_examples",
        # No foreign key: SQLite's batch rebuild of `jobs` below would cascade-delete the rows
        # just copied. Whoever deletes a job deletes its examples (JobQueue, erasure).
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(63), nullable=False, index=True),
        sa.Column("examples", sa.JSON, nullable=False),
    )
    op.execute("INSERT INTO job_examples (job_id, tenant_id, examples) "
               "SELECT id, tenant_id, examples FROM jobs WHERE status IN ('queued', 'running')")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("examples")
    op.drop_table("embedding_cache")
    op.create_table(
        "embedding_cache",
        sa.Column("tenant_id", sa.String(63), primary_key=True),
        sa.Column("fingerprint", sa.String(32), primary_key=True),
        sa.Column("text_sha256", sa.String(64), primary_key=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("embedding_cache")
    op.create_table(
        "embedding_cache",
        sa.Column("fingerprint", sa.String(32), primary_key=True),
        sa.Column("text_sha256", sa.String(64), primary_key=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("examples", sa.JSON, nullable=False, server_default="[]"))
    op.execute("UPDATE jobs SET examples = (SELECT examples FROM job_examples WHERE job_examples.job_id = jobs.id) "
               "WHERE id IN (SELECT job_id FROM job_examples)")
    op.drop_table("job_examples")
