from __future__ import annotations

import pytest

from tests.integration.server import Server


@pytest.fixture(scope="session")
def server(graft_home, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    srv = Server(
        graft_home,
        tmp / "server.log",
        GRAFT_DATABASE_URL=f"sqlite:///{tmp}/registry.db",
        GRAFT_MAX_BATCH_ITEMS="64",
        GRAFT_MAX_TEXT_CHARS="5000",
        GRAFT_MAX_QUEUED_JOBS="5",
        GRAFT_MAX_UPLOAD_MB="1",
        GRAFT_JOB_POLL_MS="100",
        GRAFT_MAX_IMAGE_MB="0.5",
        GRAFT_MAX_LORA_EXAMPLES="200",
        GRAFT_MAX_UNFREEZE_BYTES="10000000",  # one MiniLM layer (7.1 MB) fits, two do not
        # The image backbone's last 5 blocks split off: with the head conv, 4 of them (9.8 MB)
        # fit GRAFT_MAX_UNFREEZE_BYTES, 5 (10.7 MB) do not (tests/integration/test_image_deep.py).
        GRAFT_IMAGE_SPLIT_BLOCKS="5",
        # Many tests send bad keys on purpose, all from 127.0.0.1: the per-address throttle of
        # failed authentications (tests/unit/test_auth.py) must not turn their 401s into 429s.
        GRAFT_AUTH_MAX_FAILURES="500",
    ).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    """An HTTP client with the admin key, for the module's tests."""
    with server.client() as c:
        yield c
