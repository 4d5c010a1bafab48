"""Registry on SQLite and on PostgreSQL: tenants, versions, atomic promote/rollback, watermark."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from adapters import zero_shot
from adapters.format import encode
from adapters.registry import ConflictError, NotFoundError, Registry, VersionRow


def version(labels=("a", "b"), seed: int = 0):
    vectors = np.random.default_rng(seed).normal(size=(len(labels), 4))
    return encode(*zero_shot.build("minilm-l6", "f" * 32, list(labels), vectors))


@pytest.fixture
def registry(registry_url):
    r = Registry(registry_url)
    r.create_tenant("acme")
    yield r
    r.close()


def test_migrations_are_idempotent(registry_url):
    Registry(registry_url).close()
    Registry(registry_url).close()


def test_tenants(registry):
    assert registry.tenant_exists("acme") and not registry.tenant_exists("other")
    with pytest.raises(ConflictError):
        registry.create_tenant("acme")
    with pytest.raises(NotFoundError, match="unknown tenant"):
        registry.list_adapters("other")


def test_adapter_lifecycle(registry):
    assert registry.create_adapter("acme", "support", *version()) == 1
    with pytest.raises(ConflictError, match="exists"):
        registry.create_adapter("acme", "support", *version())
    assert registry.add_version("acme", "support", *version(seed=1), activate=False) == 2
    (info,) = registry.list_adapters("acme")
    assert (info.adapter, info.active_version, info.versions) == ("support", 1, 2)
    stored, history = registry.active("acme", "support")
    assert stored.version == 1 and history == []

    assert registry.promote("acme", "support", 2) == 2
    assert [(v.version, v.active) for v in registry.list_versions("acme", "support")] == [(1, False), (2, True)]
    assert registry.rollback("acme", "support") == 1
    with pytest.raises(ConflictError, match="roll back"):
        registry.rollback("acme", "support")
    with pytest.raises(NotFoundError, match="no version 9"):
        registry.promote("acme", "support", 9)

    registry.delete_adapter("acme", "support")
    with pytest.raises(NotFoundError):
        registry.active("acme", "support")
    assert registry.list_adapters("acme") == []
    # A new adapter under the old name never reuses a version number.
    assert registry.create_adapter("acme", "support", *version()) == 3


def test_watermark_and_changes(registry):
    start = registry.watermark()
    registry.create_adapter("acme", "a", *version())
    registry.create_adapter("acme", "b", *version())
    registry.add_version("acme", "a", *version(seed=2), activate=True)
    registry.delete_adapter("acme", "b")
    assert registry.watermark() == start + 4
    changes = {(c.tenant, c.adapter): c.active_version for c in registry.changes_since(start)}
    assert changes == {("acme", "a"): 2, ("acme", "b"): None}
    assert registry.changes_since(registry.watermark()) == []


def test_concurrent_promote_and_rollback_stay_consistent(registry):
    registry.create_adapter("acme", "hot", *version())
    for seed in range(3):
        registry.add_version("acme", "hot", *version(seed=seed), activate=False)
    errors: list[Exception] = []
    writes = [0] * 4  # promotes and rollbacks that succeeded, per thread
    start = registry.watermark()

    def churn(worker: int) -> None:
        r = Registry(registry.url, migrate=False)
        try:
            for i in range(15):
                try:
                    r.promote("acme", "hot", 1 + (worker + i) % 4)
                    writes[worker] += 1
                    if i % 3 == 0:
                        r.rollback("acme", "hot")
                        writes[worker] += 1
                except ConflictError:
                    pass
                except Exception as e:  # pragma: no cover - the assertion reports it
                    errors.append(e)
        finally:
            r.close()

    threads = [threading.Thread(target=churn, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stored, history = registry.active("acme", "hot")
    assert 1 <= stored.version <= 4
    assert sum(v.active for v in registry.list_versions("acme", "hot")) == 1
    assert all(1 <= v <= 4 for v in history)
    # Each successful write was applied exactly once: none lost, none counted twice.
    assert registry.watermark() - start == sum(writes)


def test_concurrent_activations_lose_no_update(registry_url):
    """#14.18: four writers each publish and activate 10 versions at once. Every activation
    reads and rewrites the adapter's history; a lost update would drop a version from it or
    hand out one version number twice. Afterwards: numbers 1..41 each once, the history holds
    every earlier active version in the order they were activated, and the last serves."""
    registry = Registry(registry_url)
    registry.create_tenant("acme")
    registry.create_adapter("acme", "hot", *version())
    published: list[list[int]] = [[] for _ in range(4)]
    errors: list[Exception] = []

    def publish(worker: int) -> None:
        r = Registry(registry.url, migrate=False)
        try:
            for i in range(10):
                published[worker].append(r.add_version("acme", "hot", *version(seed=worker * 100 + i), activate=True))
        except Exception as e:  # pragma: no cover - the assertion reports it
            errors.append(e)
        finally:
            r.close()

    threads = [threading.Thread(target=publish, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    numbers = sorted(v for vs in published for v in vs)
    assert numbers == list(range(2, 42))
    assert all(vs == sorted(vs) for vs in published)  # each writer saw its own versions grow
    stored, history = registry.active("acme", "hot")
    assert history == list(range(1, 41)) and stored.version == 41
    assert [v.version for v in registry.list_versions("acme", "hot")] == list(range(1, 42))
    registry.close()


def test_an_adapters_backbone_is_its_active_versions(registry):
    """A candidate on another backbone does not change what the adapter list says; promote
    and rollback do."""
    other = encode(*zero_shot.build("other-backbone", "e" * 32, ["a", "b"], np.eye(2, 4)))
    registry.create_adapter("acme", "mixed", *version())
    registry.add_version("acme", "mixed", *other, activate=False)

    def backbone() -> str:
        return {a.adapter: a.backbone for a in registry.list_adapters("acme")}["mixed"]

    assert backbone() == "minilm-l6"
    registry.promote("acme", "mixed", 2)
    assert backbone() == "other-backbone"
    registry.rollback("acme", "mixed")
    assert backbone() == "minilm-l6"


def test_versions_are_signed_and_a_rewritten_row_does_not_verify(registry_url):
    """The SHA-256 beside the bytes is integrity; the HMAC under the server's key is
    authenticity: someone with database access who rewrites bytes and checksum alike, or
    copies a row elsewhere, is caught."""
    from sqlalchemy import update

    from adapters.format import AdapterConfig

    key = b"k" * 40
    signed = Registry(registry_url, signing_key=key)
    signed.create_tenant("acme")
    signed.create_adapter("acme", "a", *version())
    assert signed.active("acme", "a")[0].authentic is True
    assert Registry(registry_url, migrate=False).active("acme", "a")[0].authentic is None  # no key: unchecked

    forged_config, forged_weights = version(seed=9)  # a consistent forgery: checksum matches the bytes
    with signed.engine.begin() as c:
        c.execute(update(VersionRow).where(VersionRow.tenant_id == "acme", VersionRow.version == 1).values(
            config=forged_config.to_json().decode(), weights=forged_weights, sha256=forged_config.weights_sha256))
    stored = signed.active("acme", "a")[0]
    assert AdapterConfig.from_json(stored.config).weights_sha256 == forged_config.weights_sha256
    assert stored.authentic is False
    assert Registry(registry_url, migrate=False, signing_key=b"other-key" * 5).get_version("acme", "a", 1).authentic is False
    signed.close()


def test_legacy_unsigned_versions_are_signed_once_by_the_operator(registry_url):
    legacy = Registry(registry_url)  # written before signing existed
    legacy.create_tenant("acme")
    legacy.create_adapter("acme", "a", *version())
    signed = Registry(registry_url, migrate=False, signing_key=b"k" * 40)
    assert signed.active("acme", "a")[0].authentic is False  # refused until signed
    assert signed.sign_unsigned() == 1 and signed.sign_unsigned() == 0
    assert signed.active("acme", "a")[0].authentic is True
    legacy.close()
    signed.close()
