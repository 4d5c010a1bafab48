"""Registry: tenants, adapters, versions, sequence watermark.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(63), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "adapters",
        sa.Column("tenant_id", sa.String(63), sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("name", sa.String(63), primary_key=True),
        sa.Column("backbone", sa.String(255), nullable=False),
        sa.Column("active_version", sa.Integer, nullable=True),
        sa.Column("history", sa.JSON, nullable=False),
        sa.Column("next_version", sa.Integer, nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_adapters_seq", "adapters", ["seq"])
    op.create_table(
        "adapter_versions",
        sa.Column("tenant_id", sa.String(63), primary_key=True),
        sa.Column("adapter", sa.String(63), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("weights", sa.LargeBinary, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "adapter"], ["adapters.tenant_id", "adapters.name"], ondelete="CASCADE"
        ),
    )
    meta = op.create_table(
        "registry_meta",
        sa.Column("key", sa.String(32), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(meta, [{"key": "seq", "value": 0}])


def downgrade() -> None:
    op.drop_table("registry_meta")
    op.drop_table("adapter_versions")
    op.drop_index("ix_adapters_seq", "adapters")
    op.drop_table("adapters")
    op.drop_table("tenants")
