"""Labeled examples for fine-tuning: inline JSON, or an uploaded JSONL or CSV file.

Every problem is reported with where it is: `examples[i]` for JSON, `line N` for files.
"""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from typing import Any

from service.errors import InvalidInput, PayloadTooLarge


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    examples = []
    for n, line in enumerate(_text(data).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"line {n}: not valid JSON ({e.msg})", {"line": n}) from e
        if not isinstance(item, dict):
            raise InvalidInput(f'line {n}: expected an object like {{"text": ..., "label": ...}}', {"line": n})
        examples.append({**item, "_line": n})
    return examples


def parse_csv(data: bytes) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(_text(data)))
    if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
        raise InvalidInput("line 1: a CSV upload needs a header row with the columns text and label", {"line": 1})
    examples = []
    for row in reader:
        n = reader.line_num
        if None in row or any(v is None for v in row.values()):
            raise InvalidInput(f"line {n}: wrong number of fields", {"line": n})
        examples.append({"text": row["text"], "label": row["label"], "_line": n})
    return examples


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"the upload is not UTF-8 text (byte {e.start})") from e


def check_examples(examples: list[Any], *, max_examples: int, max_chars: int) -> list[dict[str, str]]:
    """Clean {"text", "label"} pairs, or a 400/413 that says which example is wrong."""
    if len(examples) > max_examples:
        raise PayloadTooLarge(
            f"{len(examples)} examples; the limit is {max_examples} (GRAFT_MAX_TRAIN_EXAMPLES)",
            {"examples": len(examples), "limit": max_examples},
        )
    clean = []
    for i, item in enumerate(examples):
        where = f"line {item['_line']}" if isinstance(item, dict) and "_line" in item else f"examples[{i}]"
        detail = {"line": item["_line"]} if isinstance(item, dict) and "_line" in item else {"index": i}
        if not isinstance(item, dict):
            raise InvalidInput(f'{where}: expected an object like {{"text": ..., "label": ...}}', detail)
        text, label = item.get("text"), item.get("label")
        if not isinstance(text, str) or not text.strip():
            raise InvalidInput(f"{where}: text must be a non-empty string", detail)
        if len(text) > max_chars:
            raise PayloadTooLarge(f"{where}: text has {len(text)} characters; the limit is {max_chars}", detail)
        if not isinstance(label, str) or not label.strip():
            raise InvalidInput(f"{where}: label must be a non-empty string", detail)
        if len(label) > 200:
            raise InvalidInput(f"{where}: label is longer than 200 characters", detail)
        clean.append({"text": text, "label": label})
    counts = Counter(e["label"] for e in clean)
    if len(counts) < 2:
        raise InvalidInput(f"fine-tuning needs at least 2 classes; got {len(counts)}", {"classes": dict(counts)})
    thin = sorted(label for label, n in counts.items() if n < 2)
    if thin:
        raise InvalidInput(
            f"every class needs at least 2 examples (one to train, one to validate); too few for {thin}",
            {"classes": dict(counts)},
        )
    return clean
