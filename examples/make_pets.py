"""Build `pets.zip` (one folder per label: cat/1.png, dog/1.png, …) and `cat.jpg`, the
sample pictures of the README's image examples: small cartoon faces drawn with Pillow
(a cat: pointed ears, whiskers; a dog: floppy ears, a snout), each with its own colours,
size and position. Use your own photos instead for a real task.

    .venv/bin/python examples/make_pets.py [OUT_DIR]     # default: the current directory
"""
from __future__ import annotations

import io
import random
import sys
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 96
PER_LABEL = 8


def face(label: str, rng: random.Random) -> Image.Image:
    bg = tuple(rng.randint(170, 255) for _ in range(3))
    img = Image.new("RGB", (SIZE, SIZE), bg)
    d = ImageDraw.Draw(img)
    cx, cy, r = SIZE // 2 + rng.randint(-8, 8), SIZE // 2 + rng.randint(-4, 8), rng.randint(22, 30)
    if label == "cat":
        fur = (rng.randint(200, 250), rng.randint(110, 160), rng.randint(20, 60))  # ginger
        for side in (-1, 1):  # pointed ears
            d.polygon([(cx + side * r, cy - r // 3), (cx + side * r // 5, cy - r), (cx + side * r, cy - r - r // 2)], fill=fur)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fur)
        for side in (-1, 1):  # whiskers
            for dy in (-3, 3):
                d.line([(cx + side * r // 4, cy + r // 3), (cx + side * (r + 8), cy + r // 3 + dy * 2)], fill=(40, 40, 40))
        eye = (60, 160, 60)
    else:
        fur = (rng.randint(100, 150), rng.randint(60, 90), rng.randint(20, 50))  # brown
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fur)
        for side in (-1, 1):  # floppy ears
            d.ellipse([cx + side * r - r // 3, cy - r // 2, cx + side * r + r // 3, cy + r], fill=(60, 35, 20))
        d.ellipse([cx - r // 2, cy + r // 6, cx + r // 2, cy + r - 2], fill=(220, 200, 170))  # snout
        d.ellipse([cx - 4, cy + r // 4, cx + 4, cy + r // 4 + 6], fill=(20, 20, 20))  # nose
        eye = (30, 20, 10)
    for side in (-1, 1):
        d.ellipse([cx + side * r // 2 - 3, cy - r // 3 - 3, cx + side * r // 2 + 3, cy - r // 3 + 3], fill=eye)
    return img


def main(out: Path) -> None:
    rng = random.Random(7)
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out / "pets.zip", "w") as zf:
        for label in ("cat", "dog"):
            for i in range(1, PER_LABEL + 1):
                buf = io.BytesIO()
                face(label, rng).save(buf, "PNG")
                zf.writestr(f"{label}/{i}.png", buf.getvalue())
    face("cat", rng).save(out / "cat.jpg", "JPEG", quality=90)
    print(f"wrote {out / 'pets.zip'} ({2 * PER_LABEL} pictures: cat/, dog/) and {out / 'cat.jpg'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
