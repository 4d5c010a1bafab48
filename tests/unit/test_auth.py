"""Admin key loading and token checks (hardening: no empty or short admin key, ever)."""
from __future__ import annotations

import asyncio
import os
import stat
import threading

import pytest

from service.auth import ADMIN, Authenticator, Principal, load_admin_key
from service.errors import Forbidden, NotFound, Unauthenticated
from service.settings import Settings


class NoKeys:
    """A key store that knows no tenant key (the admin path needs none)."""

    def verify_until(self, key: str) -> None:
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


class Keys:
    """A key store with one good key; `down` makes it fail like an unreachable database."""

    def __init__(self) -> None:
        self.down = False
        self.lookups = 0

    def verify_until(self, key: str) -> tuple[str, None] | None:
        from sqlalchemy.exc import OperationalError

        self.lookups += 1
        if self.down:
            raise OperationalError("SELECT", {}, Exception("connection refused"))
        return ("acme", None) if key == "graft_good_key" else None


def test_during_an_outage_a_cached_key_stays_good_only_for_the_grace(monkeypatch):
    from sqlalchemy.exc import OperationalError

    from service import auth as auth_module

    clock = [1000.0]
    monkeypatch.setattr(auth_module.time, "monotonic", lambda: clock[0])
    keys = Keys()
    auth = Authenticator(keys, "k" * 40, cache_s=5, outage_grace_s=60)  # type: ignore[arg-type]
    assert asyncio.run(auth.authenticate("Bearer graft_good_key")).tenant == "acme"
    keys.down = True
    clock[0] += 30
    assert asyncio.run(auth.authenticate("Bearer graft_good_key")).tenant == "acme"  # within the grace
    clock[0] += 40
    with pytest.raises(OperationalError):  # 70 s after the last verification: not indefinitely
        asyncio.run(auth.authenticate("Bearer graft_good_key"))


def test_bad_keys_cannot_flush_good_ones_from_the_cache():
    keys = Keys()
    auth = Authenticator(keys, "k" * 40, cache_s=60, cache_size=4, max_failures=0)  # type: ignore[arg-type]
    asyncio.run(auth.authenticate("Bearer graft_good_key"))
    for i in range(50):
        with pytest.raises(Unauthenticated):
            asyncio.run(auth.authenticate(f"Bearer graft_bad{i}_x"))
    before = keys.lookups
    asyncio.run(auth.authenticate("Bearer graft_good_key"))
    assert keys.lookups == before  # still cached


def test_failed_authentications_are_throttled_per_address():
    from service.errors import RateLimited

    auth = Authenticator(Keys(), "k" * 40, max_failures=3, failure_window_s=60)  # type: ignore[arg-type]
    for _ in range(3):
        with pytest.raises(Unauthenticated):
            asyncio.run(auth.authenticate("Bearer graft_bad_x", "10.0.0.9"))
    with pytest.raises(RateLimited) as refused:
        asyncio.run(auth.authenticate("Bearer graft_good_key", "10.0.0.9"))
    assert int(refused.value.headers["Retry-After"]) >= 1
    assert asyncio.run(auth.authenticate("Bearer graft_good_key", "10.0.0.10")).tenant == "acme"  # others unaffected


def test_a_tenant_key_on_an_admin_route_is_forbidden_not_hidden():
    """Admin routes are public in the OpenAPI description: a tenant's key is told it needs the
    admin key (403 / PERMISSION_DENIED). Another tenant's resources stay hidden (404)."""
    ADMIN.require_admin()
    with pytest.raises(Forbidden) as e:
        Principal("acme").require_admin()
    assert (e.value.status, e.value.code, e.value.grpc_status) == (403, "forbidden", "PERMISSION_DENIED")
    assert "needs the admin key" in e.value.message
    assert e.value.to_dict()["error"]["code"] == "forbidden"
    Principal("acme").authorize("acme")
    ADMIN.authorize("acme")
    with pytest.raises(NotFound):
        Principal("acme").authorize("globex")
