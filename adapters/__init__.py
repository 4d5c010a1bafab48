"""Tenant adapters: format, registry, cache, training (see ../shared/DESIGN.md).

Depends on `models/` only through a backbone's id, dim and fingerprint.
"""
