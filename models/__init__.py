"""Frozen pretrained backbones: catalog, ONNX export, ONNX Runtime inference.

Knows nothing of tenants or adapters; `adapters/` sees a backbone only through its
`id`, `dim` and `fingerprint`.
"""
from __future__ import annotations

from models.base import Backbone, EmbedResult
from models.catalog import BackboneSpec, resolve_spec
from models.loader import load_backbone

__all__ = ["Backbone", "BackboneSpec", "EmbedResult", "load_backbone", "resolve_spec"]
