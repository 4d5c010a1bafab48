"""The hidden-state cache: deep adapters' training inputs, kept per tenant like embeddings.

A LoRA job trains on the hidden states the serving lower graph computes for each example
(float16, tokens x hidden); a tenant retraining on the same texts reads them back instead.
A table of its own, not `embedding_cache`: its key (backbone fingerprint, split layer,
lower graph file and precision: `TextBackbone.hidden_key`) does not fit that table's
32-character fingerprint, a row needs its token count to recover the shape, and rows are
tens of KB instead of one vector. Rows older than GRAFT_EMBEDDING_CACHE_DAYS are swept;
erasing a tenant deletes its rows.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hidden_state_cache",
        sa.Column("tenant_id", sa.String(63), primary_key=True),
        sa.Column("state_key", sa.String(255), primary_key=True),
        sa.Column("text_sha256", sa.String(64), primary_key=True),
        sa.Column("tokens", sa.Integer, nullable=False),
        sa.Column("states", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("hidden_state_cache")
