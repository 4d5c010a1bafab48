from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def graft_home() -> Path:
    """Artifacts are shared with `make serve` (.graft), so a second run reuses the export."""
    home = Path(os.environ.get("GRAFT_HOME", ROOT / ".graft")).resolve()
    home.mkdir(parents=True, exist_ok=True)
    return home


@pytest.fixture(scope="session")
def minilm_spec():
    from models.catalog import resolve_spec

    return resolve_spec("minilm-l6")


SENTENCES = [
    "hello world",
    "The movie was surprisingly good, with a clever script and fine acting.",
    "Refund my order now!",
    "What time does the store open on Sundays?",
    "terrible, boring, awful film",
    "Ünïcödé tëxt with émojis 😀 and 中文 characters",
    "Please reset my password; I cannot log in to my account since yesterday.",
    "The stock market fell sharply on Tuesday after the central bank's announcement.",
    "A quiet, patient drama about grief that earns every one of its tears.",
    "ok",
    "",
    "word " * 400,  # longer than the 256-token limit: truncated
    "Machine learning models are trained on data, then frozen and reused for new tasks.",
    "I loved it!!!",
    "Shipping took three weeks and the box arrived damaged.",
    "Can I change the delivery address after the order has shipped?",
]


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` run only where onnxruntime-gpu sees an NVIDIA GPU (never in CI)."""
    from models.runtime import cuda_available

    if cuda_available():
        return
    skip = pytest.mark.skip(reason="needs onnxruntime-gpu (make install GPU=1) and an NVIDIA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


POSTGRES_ADMIN_URL = os.environ.get("GRAFT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_expected() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("GRAFT_REQUIRE_POSTGRES"))


@pytest.fixture(scope="session")
def postgres_database():
    """A fresh PostgreSQL database for this session, dropped at the end.

    Where PostgreSQL is expected (CI=true, or GRAFT_REQUIRE_POSTGRES) and unreachable, the
    tests fail instead of skipping.
    """
    import uuid

    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        message = f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL}: {e}"
        if _postgres_expected():
            pytest.fail(message)
        pytest.skip(message)
    name = f"graft_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path):
    """Each registry test runs on SQLite and on PostgreSQL, each time on an empty schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/registry.db"
        return
    url = request.getfixturevalue("postgres_database")
    from sqlalchemy import create_engine, text

    from adapters.registry import normalise_url

    engine = create_engine(normalise_url(url))
    with engine.begin() as c:
        c.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    yield url
