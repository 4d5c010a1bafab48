"""Tenant adapters: format, registry, cache, jobs, keys, training and the fine-tune pipeline
(see docs/ARCHITECTURE.md).

Depends on `models/` only through the Backbone interface (id, kind, dim, fingerprint, embed).
"""
