"""Admin key loading and token checks (hardening: no empty or short admin key, ever)."""
from __future__ import annotations

import asyncio
import os
import stat
import threading

import pytest

from service.auth import Authenticator, load_admin_key
from service.errors import Unauthenticated
from service.settings import Settings


class NoKeys:
    """A key store that knows no tenant key (the admin path needs none)."""

    def verify(self, key: str) -> None:
        return None


@pytest.mark.parametrize("key", ["   \n", "\u00a0", "short-key", "x" * 31])
def test_short_or_blank_admin_keys_are_refused(tmp_path, key):
    with pytest.raises(ValueError, match="at least 32"):
        load_admin_key(Settings(home=tmp_path, admin_key=key))
    (tmp_path / "admin.key").write_text(key)  # a mounted file that is blank or short
    with pytest.raises(ValueError, match="admin.key"):
        load_admin_key(Settings(home=tmp_path))


def test_an_empty_mounted_key_file_is_refused(tmp_path):
    (tmp_path / "admin.key").write_text("")
    with pytest.raises(ValueError, match="0 characters"):
        load_admin_key(Settings(home=tmp_path))


def test_generated_key_is_whole_for_every_concurrent_reader(tmp_path):
    """Many workers start at once: each reads the same complete key, never an empty file."""
    keys: list[str] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            keys.append(load_admin_key(Settings(home=tmp_path)))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(keys)) == 1 and len(keys[0]) >= 32
    assert stat.S_IMODE(os.stat(tmp_path / "admin.key").st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["admin.key"]  # no temporary left behind


@pytest.mark.parametrize("header", ["Bearer ", "Bearer \u00a0", "bearer \t ", "Bearer \u2003\u00a0"])
def test_an_empty_token_never_authenticates(header):
    auth = Authenticator(NoKeys(), "k" * 40)  # type: ignore[arg-type]
    with pytest.raises(Unauthenticated, match="empty"):
        asyncio.run(auth.authenticate(header))
    assert asyncio.run(auth.authenticate("Bearer " + "k" * 40)).admin
