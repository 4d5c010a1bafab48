"""Labeled examples for fine-tuning: inline JSON, or an uploaded JSONL, CSV or zip file.

Every problem is reported with where it is: `examples[i]` for JSON, `line N` for JSONL and
CSV, the member's name for a zip of images.
"""
from __future__ import annotations

import csv
import io
import json
import zipfile
from collections import Counter
from pathlib import PurePosixPath
from typing import Any, Callable

from models.base import ItemError
from service.errors import InvalidInput, PayloadTooLarge
from service.items import image_bytes, image_text

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def parse_jsonl(data: bytes) -> list[dict[str, Any]]:
    examples = []
    for n, line in enumerate(_text(data).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidInput(f"line {n}: not valid JSON ({e.msg})", {"line": n}) from e
        except RecursionError:
            raise InvalidInput(f"line {n}: the JSON is nested too deeply", {"line": n}) from None
        if not isinstance(item, dict):
            raise InvalidInput(f'line {n}: expected an object like {{"text": ..., "label": ...}}', {"line": n})
        examples.append({**item, "_line": n})
    return examples


def parse_csv(data: bytes) -> list[dict[str, Any]]:
    reader = csv.DictReader(io.StringIO(_text(data)))
    if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
        raise InvalidInput("line 1: a CSV upload needs a header row with the columns text and label", {"line": 1})
    examples = []
    rows = iter(reader)
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return examples
        except csv.Error as e:  # a field past csv.field_size_limit(), a stray quote
            n = reader.line_num + 1  # the line being read when it failed
            if "field limit" in str(e):
                raise PayloadTooLarge(f"line {n}: a field is longer than {csv.field_size_limit()} characters",
                                      {"line": n}) from None
            raise InvalidInput(f"line {n}: not valid CSV ({e})", {"line": n}) from None
        n = reader.line_num
        if None in row or any(v is None for v in row.values()):
            raise InvalidInput(f"line {n}: wrong number of fields", {"line": n})
        examples.append({"text": row["text"], "label": row["label"], "_line": n,
                         **({"group": row["group"]} if row.get("group") else {})})


def parse_zip(data: bytes, *, max_bytes: int) -> list[dict[str, Any]]:
    """A zip of images, one folder per label: `cat/001.png`, `dog/a.jpg` (other files and
    folders such as __MACOSX are skipped). Unpacks at most `max_bytes` in all."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise InvalidInput("the upload is not a zip file") from None
    members = [m for m in archive.infolist() if not m.is_dir()]
    total = sum(m.file_size for m in members)
    if total > max_bytes:
        raise PayloadTooLarge(f"the zip unpacks to {total} bytes; the limit is {max_bytes} (GRAFT_MAX_UPLOAD_MB)")
    examples = []
    for m in members:
        path = PurePosixPath(m.filename)
        if path.suffix.lower() not in IMAGE_SUFFIXES or any(p.startswith((".", "__")) for p in path.parts):
            continue
        if len(path.parts) < 2:
            raise InvalidInput(f"{m.filename}: put each image in a folder named after its label (label/{path.name})",
                               {"file": m.filename})
        try:
            content = archive.read(m)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as e:
            raise InvalidInput(f"{m.filename}: cannot be unpacked ({e})", {"file": m.filename}) from None
        examples.append({"image": image_text(content), "label": path.parts[-2], "_file": m.filename})
    if not examples:
        raise InvalidInput(f"the zip holds no {'/'.join(IMAGE_SUFFIXES)} images in label folders")
    return examples


def _text(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InvalidInput(
            f"the upload is not UTF-8 text (byte {e.start}): send JSONL, CSV, or a zip of images in label folders"
        ) from e


def check_examples(
    examples: list[Any], *, kind: str = "text", check: Callable[[Any], Any] | None = None,
    max_examples: int, max_chars: int,
) -> list[dict[str, str]]:
    """Clean {"text", "label"} pairs (or {"image": base64, "label"} for an image backbone,
    each image's header read by `check`: format and pixel limits; the worker decodes them),
    or a 400/413 that says which example is wrong."""
    if len(examples) > max_examples:
        raise PayloadTooLarge(
            f"{len(examples)} examples; the limit is {max_examples} (GRAFT_MAX_TRAIN_EXAMPLES)",
            {"examples": len(examples), "limit": max_examples},
        )
    field = "image" if kind == "image" else "text"
    clean = []
    for i, item in enumerate(examples):
        where, detail = _where(item, i)
        if not isinstance(item, dict):
            raise InvalidInput(f'{where}: expected an object like {{"{field}": ..., "label": ...}}', detail)
        other = "text" if field == "image" else "image"
        if other in item and field not in item:
            raise InvalidInput(f"{where}: this backbone embeds {kind}s; send {field!r}, not {other!r}", detail)
        value, label = item.get(field), item.get("label")
        if field == "text":
            if not isinstance(value, str) or not value.strip():
                raise InvalidInput(f"{where}: text must be a non-empty string", detail)
            if len(value) > max_chars:
                raise PayloadTooLarge(f"{where}: text has {len(value)} characters; the limit is {max_chars}", detail)
        else:
            data = image_bytes(value, where)
            try:
                if check is not None:
                    check(data)
            except ItemError as e:
                raise (PayloadTooLarge if e.too_large else InvalidInput)(f"{where}: {e}", detail) from None
            value = image_text(data)
        if not isinstance(label, str) or not label.strip():
            raise InvalidInput(f"{where}: label must be a non-empty string", detail)
        if len(label) > 200:
            raise InvalidInput(f"{where}: label is longer than 200 characters", detail)
        # Optional: who or what the example is about (a dialect, a region, a product line);
        # the model card reports macro-F1 per group and the largest gap (adapters/card.py).
        group = item.get("group")
        if group is not None and (not isinstance(group, str) or not group.strip() or len(group) > 200):
            raise InvalidInput(f"{where}: group, when given, must be a non-empty string of at most 200 characters",
                               detail)
        # An image is decoded later, by the worker: `at` lets it name the example as here.
        clean.append({field: value, "label": label, **({"group": group} if group is not None else {}),
                      **({"at": where} if field == "image" else {})})
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


def _where(item: Any, i: int) -> tuple[str, dict[str, Any]]:
    if isinstance(item, dict) and "_line" in item:
        return f"line {item['_line']}", {"line": item["_line"]}
    if isinstance(item, dict) and "_file" in item:
        return str(item["_file"]), {"file": item["_file"]}
    return f"examples[{i}]", {"index": i}
