"""Small images the tests draw themselves: shapes on gradients, as PNG or JPEG bytes."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("disc", "square", "triangle")


def picture(seed: int, size: tuple[int, int] = (96, 80), shape: str | None = None) -> Image.Image:
    """A gradient background with a few small boxes and one large shape (`shape` fixes which)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(60, 200, 3)
    tilt = rng.uniform(-60, 60, 3)
    arr = np.clip(base + tilt * (xx / w)[..., None] + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):
        box = _box(rng, w, h, 0.1, 0.3)
        draw.rectangle(box, fill=tuple(int(c) for c in rng.uniform(0, 255, 3)))
    fill = tuple(int(c) for c in rng.uniform(0, 255, 3))
    x0, y0, x1, y1 = _box(rng, w, h, 0.4, 0.7)
    shape = shape or SHAPES[int(rng.integers(len(SHAPES)))]
    if shape == "disc":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return img


def _box(rng: np.random.Generator, w: int, h: int, lo: float, hi: float) -> tuple[int, int, int, int]:
    side = int(min(w, h) * rng.uniform(lo, hi))
    x, y = int(rng.integers(0, w - side)), int(rng.integers(0, h - side))
    return x, y, x + side, y + side


def encode(img: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def png(seed: int, **kw) -> bytes:
    return encode(picture(seed, **kw), "PNG")


def jpeg(seed: int, **kw) -> bytes:
    return encode(picture(seed, **kw), "JPEG", quality=90)
