"""The Backbone abstraction: a frozen encoder that turns raw inputs into unit vectors.

Preprocessing (tokenising text, decoding and resizing images) belongs to the backbone,
so callers hand over raw items and get embeddings back, whatever the modality.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np


class ItemError(ValueError):
    """One raw item this backbone cannot embed; the message says why."""

    def __init__(self, reason: str, *, too_large: bool = False) -> None:
        super().__init__(reason)
        self.too_large = too_large  # a size limit (HTTP 413) rather than a malformed item (400)
        self.index = 0  # which item of a request (prepare_many sets it)


@dataclass(frozen=True)
class EmbedResult:
    """Embeddings for a list of items, in order, plus which items were cut to fit."""

    vectors: np.ndarray  # float32, shape (n, dim), L2-normalised rows
    truncated: list[bool]
    calls: int = 0  # ONNX Runtime calls it took (a batch is cut into sub-batches of max_rows)


class Backbone(ABC):
    """A frozen pretrained encoder served by ONNX Runtime."""

    id: str
    kind: str  # "text" or "image"
    dim: int
    fingerprint: str  # identity of the embedding function (weights + preprocessing)
    provider: str  # ONNX Runtime execution provider in use
    precision: str  # "fp32", "int8" or "fp16": what is served
    int8: dict[str, Any] | None = None  # the int8 gate's verdict when int8 was asked for
    max_rows: int = 1  # rows per ONNX Runtime call (int8 text: 1, so no row's scale depends on another's)
    licence: str = "unknown"  # the weights' licence (models/catalog.licence; load_backbone sets it)
    parity: dict[str, Any] | None = None  # the parity gate's figures per graph (models/parity.py)
    deep_refusal: str | None = None  # why deep adapters are not offered, where the family has no split graphs

    @abstractmethod
    def prepare(self, item: Any) -> Any:
        """Check one raw item and return what `embed` takes for it (text: the string;
        image: the decoded, cropped pixels), or raise ItemError saying what is wrong.
        Decoding can be slow: call it off the event loop for images."""

    @property
    def split_shape(self) -> Any:
        """Where deep adapters attach (models/split.SplitShape), or None: head-only."""
        return None

    def prepare_many(self, items: list[Any], input_type: str = "query") -> list[Any]:
        """`prepare` for all items of a request, off the compute lane; a backbone may do
        batch-level work here (text: one tokeniser call, with the prompt of `input_type`).
        ItemError's `index` names the item at fault."""
        ready = []
        for i, item in enumerate(items):
            try:
                ready.append(self.prepare(item))
            except ItemError as e:
                e.index = i
                raise
        return ready

    def cost(self, item: Any) -> int:
        """What a prepared item costs a backbone pass, in the unit of the pass budget
        (GRAFT_MAX_BATCH_TOKENS for text: its token count); 1 where there is no budget."""
        return 1

    def check(self, item: Any) -> None:
        """Check one raw item cheaply (ItemError if it cannot be used), without the cost of
        `prepare` where that is high: an image backbone reads only the header."""
        self.prepare(item)

    @abstractmethod
    def embed(self, items: list[Any]) -> EmbedResult:
        """Embed raw or prepared items in batched ONNX Runtime passes. Blocking; call it
        from a worker thread."""

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
            "provider": self.provider,
            "precision": self.precision,
            "max_rows_per_call": self.max_rows,
            **({"int8_gate": self.int8} if self.int8 else {}),
            **({"parity_gate": self.parity} if self.parity else {}),
            **({"deep_adapters": {"methods": [], "refused": self.deep_refusal}} if self.deep_refusal else {}),
        }
