"""HMAC signatures of adapter versions, keyed by the deployment's GRAFT_SIGNING_KEY.

The SHA-256 in a version's config travels with the bytes it guards: it catches corruption,
not someone with database access rewriting both. The signature needs the key, which the
database never holds.
"""
from __future__ import annotations

import hashlib
import hmac


def sign(key: bytes, tenant: str, adapter: str, version: int, config: bytes, weights: bytes) -> str:
    """Over where the version lives and what it holds: a row copied to another tenant,
    adapter or version number does not verify either."""
    mac = hmac.new(key, f"{tenant}\0{adapter}\0{version}\0".encode(), hashlib.sha256)
    mac.update(hashlib.sha256(config).digest())
    mac.update(hashlib.sha256(weights).digest())
    return mac.hexdigest()
