"""Text encoder families Graft exports: what differs between them at export and serving time.

A family is chosen by the model's `config.json` `model_type`. It says which ONNX Runtime
transformer optimiser (fusions) the exported graph goes through (none where ORT has no
matching pattern: the graph is then served as exported, and ORT's own graph optimisations
still run when a session loads it), how many position rows are not usable by tokens
(RoBERTa counts positions from `pad_token_id + 1`), and whether the split graphs of deep
adapters (models/split.py: BERT-shaped layers) exist for it. Whatever the family, the
parity gate (models/parity.py) compares every exported graph with the torch model before it
serves.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


class UnsupportedFamilyError(ValueError):
    """The model's architecture is not one Graft knows how to export."""


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json model_type values
    optimizer: str | None  # onnxruntime.transformers optimizer model_type; None: no fusion pass
    deep: bool  # split graphs for deep adapters (LoRA, unfreeze): BERT-shaped encoder.layer[i]
    position_offset: bool = False  # positions start after pad_token_id (RoBERTa): that many rows unusable
    example: str = ""  # a public checkpoint of the family, for the docs


FAMILIES: tuple[Family, ...] = (
    Family("bert", ("bert",), "bert", deep=True, example="sentence-transformers/all-MiniLM-L6-v2, BAAI/bge-small-en"),
    # ORT's "bert" optimiser matches DistilBERT's attention too (its own docs use it so).
    Family("distilbert", ("distilbert",), "bert", deep=False, example="distilbert-base-uncased"),
    # RoBERTa's layers are BERT's (same module names), only the embeddings differ: ORT fuses
    # them with the "bert" optimiser (it has no roberta type), and the split graphs work.
    Family("roberta", ("roberta", "xlm-roberta", "camembert"), "bert", deep=True, position_offset=True,
           example="roberta-base, intfloat/multilingual-e5-small (XLM-R)"),
    # ModernBERT (rotary positions, local/global attention, fused Wqkv): no ORT fusion pattern.
    Family("modernbert", ("modernbert",), None, deep=False, example="answerdotai/ModernBERT-base"),
)


def family_of(model_type: str) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    known = sorted(t for f in FAMILIES for t in f.model_types)
    raise UnsupportedFamilyError(
        f"model_type {model_type!r} is not a text encoder family Graft exports: supported {known}")


def family_of_dir(path: Path) -> Family:
    config = json.loads((Path(path) / "config.json").read_text())
    return family_of(str(config.get("model_type", "")))


def usable_positions(config: dict) -> int:
    """Tokens the model can take: max_position_embeddings, less the rows RoBERTa-style models
    leave below their first position (pad_token_id + 1)."""
    family = family_of(str(config.get("model_type", "")))
    n = int(config.get("max_position_embeddings", 512))
    if family.position_offset:
        n -= int(config.get("pad_token_id", 1)) + 1
    return n
