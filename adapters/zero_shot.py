"""Zero-shot adapters: a working classifier from label names alone.

Each label's text (its description, or the name itself) is embedded by the backbone; the
head scores an input by cosine similarity to each label embedding, scaled so the softmax
is decisive. A new tenant gets predictions before it has any training data, and the same
head is the zero-shot baseline a fine-tuned version must beat.

On a CLIP-style backbone (an image backbone with a text tower, models/hf_image.py) the same
call makes an image classifier: each label is put in the backbone's prompt ("a photo of a
{label}") and embedded by the text tower, and the scale is the model's own logit scale, so the
head computes CLIP's logits_per_image.
"""
from __future__ import annotations

import numpy as np

from adapters.format import AdapterConfig

# Logit scale on cosine similarity (CLIP uses 100 on its own embedding geometry; sentence
# encoders spread related texts over ~0.1-0.3 of cosine, where 20 gives clear winners).
SCALE = 20.0
MAX_LABELS = 1000
MAX_LABEL_CHARS = 200


class LabelError(ValueError):
    """The label set cannot make a classifier; the message says which label and why."""


def check_labels(labels: list[str], descriptions: dict[str, str] | None = None) -> None:
    if len(labels) < 2:
        raise LabelError("a classifier needs at least 2 labels")
    if len(labels) > MAX_LABELS:
        raise LabelError(f"{len(labels)} labels; the limit is {MAX_LABELS}")
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise LabelError(f"labels[{i}] is empty: every label needs a name")
        if len(label) > MAX_LABEL_CHARS:
            raise LabelError(f"labels[{i}] is longer than {MAX_LABEL_CHARS} characters")
        if label in seen:
            raise LabelError(f"labels[{i}] {label!r} appears twice: labels must be unique")
        seen.add(label)
    for name, text in (descriptions or {}).items():
        if name not in seen:
            raise LabelError(f"descriptions names {name!r}, which is not one of the labels")
        if not isinstance(text, str) or not text.strip():
            raise LabelError(f"the description of {name!r} is empty")


def label_texts(labels: list[str], descriptions: dict[str, str] | None = None) -> list[str]:
    """What the backbone embeds for each label."""
    descriptions = descriptions or {}
    return [descriptions.get(label, label) for label in labels]


def build(
    backbone: str,
    fingerprint: str,
    labels: list[str],
    label_vectors: np.ndarray,
    descriptions: dict[str, str] | None = None,
    *, scale: float = SCALE, texts: list[str] | None = None, extra: dict | None = None,
) -> tuple[AdapterConfig, dict[str, np.ndarray]]:
    """Config and tensors of a linear head whose rows are the scaled label embeddings
    (`texts`: what was embedded, when not the labels or descriptions; `extra`: more to record
    in the version's training section)."""
    check_labels(labels, descriptions)
    vectors = np.asarray(label_vectors, dtype=np.float32)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    config = AdapterConfig(
        backbone=backbone,
        fingerprint=fingerprint,
        dim=int(vectors.shape[1]),
        head="linear",
        labels=list(labels),
        training={"method": "zero-shot", "texts": texts or label_texts(labels, descriptions), "scale": scale,
                  **(extra or {})},
    )
    tensors = {"weight": vectors * np.float32(scale), "bias": np.zeros(len(labels), dtype=np.float32)}
    return config, tensors
