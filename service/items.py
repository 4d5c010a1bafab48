"""Input items at the edge: a text stays a string, `{"image": "<base64>"}` becomes bytes.

The Engine and the backbones see `str` (text) or `bytes` (an encoded PNG/JPEG image);
gRPC sends the bytes as they are.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

from service.errors import InvalidInput


def image_bytes(value: Any, where: str) -> bytes:
    """The bytes of a base64 image (a `data:image/...;base64,` prefix is allowed)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f'{where}: image must be a non-empty base64 string')
    if value.startswith("data:"):
        _, _, value = value.partition(",")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"{where}: image is not valid base64") from None


def image_text(data: bytes) -> str:
    """The canonical base64 of an image: jobs store it, the embedding cache keys on it."""
    return base64.b64encode(data).decode("ascii")


def raw_items(inputs: list[Any]) -> list[str | bytes]:
    """Request inputs (strings, or objects with an `image`) as engine items."""
    items: list[str | bytes] = []
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            items.append(item)
        else:
            items.append(image_bytes(getattr(item, "image", None), f"inputs[{i}]"))
    return items
