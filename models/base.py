"""The Backbone abstraction: a frozen encoder that turns raw inputs into unit vectors.

Preprocessing (tokenising text, decoding and resizing images) belongs to the backbone,
so callers hand over raw items and get embeddings back, whatever the modality.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class EmbedResult:
    """Embeddings for a list of items, in order, plus which items were cut to fit."""

    vectors: np.ndarray  # float32, shape (n, dim), L2-normalised rows
    truncated: list[bool]


class Backbone(ABC):
    """A frozen pretrained encoder served by ONNX Runtime."""

    id: str
    kind: str  # "text" or "image"
    dim: int
    fingerprint: str  # identity of the embedding function (weights + preprocessing)
    provider: str  # ONNX Runtime execution provider in use
    precision: str  # "fp32", "int8" or "fp16"

    @abstractmethod
    def check_item(self, item: Any) -> str | None:
        """Why this raw item cannot be embedded by this backbone, or None when it can."""

    @abstractmethod
    def embed(self, items: list[Any]) -> EmbedResult:
        """Embed a batch in one ONNX Runtime pass. Blocking; call it from a worker thread."""

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
            "provider": self.provider,
            "precision": self.precision,
        }
