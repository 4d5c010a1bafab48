"""Alembic environment: runs on the connection handed over by `adapters.migrations.upgrade`,
or, from the alembic CLI, on GRAFT_DATABASE_URL (default: the SQLite file under GRAFT_HOME)."""
from __future__ import annotations

import os
from pathlib import Path

from alembic import context

from adapters.registry import Base, default_url, make_engine

config = context.config
target_metadata = Base.metadata


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = os.environ.get("GRAFT_DATABASE_URL") or default_url(Path(os.environ.get("GRAFT_HOME", ".graft")))
    with make_engine(url).begin() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
