"""`make bench`: bring your own backbone, per text and image family (tiny random-weight models).

For each family of models/families.py a tiny encoder (hidden 32, 2 layers, random weights,
its tokenizer trained here: tests/tiny_models.py) is made offline in a temporary directory,
then timed through what `graft prepare` does: export + ORT optimisation (the fp32 graph), the
parity gate against torch (fp32 max abs diff on the 140 calibration texts), the int8 gate
(min cosine of the served recipe, or fp32), and throughput of the served graph at batch 16
on the calibration texts. Then per image family of models/hf_image.py (ViT, ConvNeXt, ResNet,
CLIP; 32 x 32 inputs, tests/tiny_models.py make_tiny_image): export, the parity gate on the
calibration photos (CLIP: and its text tower on the calibration texts), and throughput at
batch 16 of the served graph on prepared pixels and of decode + graph from PNG bytes. Tiny
models: the figures say the export and the gates work for the family and what they cost, not
how fast a real checkpoint of it serves.

    .venv/bin/python -m loadtests.bench_families --out docs/BENCHMARKS.md
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

from loadtests.common import measure, publish

BEGIN, END = "<!-- bench_families:begin -->", "<!-- bench_families:end -->"


def cpu_flags() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return "unknown"
    line = next((ln for ln in out.splitlines() if ln.startswith("Flags")), "")
    wanted = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "fma", "f16c")
    return " ".join(f for f in line.split()[1:] if f in wanted) or "none of the int8-relevant ones"


def row(family: str, tmp: Path, seconds: float) -> str:
    from models import load_backbone
    from models.catalog import resolve_spec
    from models.export import ensure_artifact
    from models.families import family_of
    from models.int8 import calibration_texts
    from models.parity import check_whole
    from tests.tiny_models import make_tiny

    path = make_tiny(family, tmp / family)
    spec = resolve_spec(str(path))
    home = tmp / "home"
    started = time.perf_counter()
    fp32 = ensure_artifact(spec, "fp32", home)
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    parity = check_whole(spec, home, fp32)
    parity_s = time.perf_counter() - started
    int8_backbone = load_backbone(str(path), home, precision="int8", intra_op_threads=0)
    fp32_backbone = load_backbone(str(path), home, precision="fp32", intra_op_threads=0)
    texts = calibration_texts()
    fp32_rate, _ = measure(lambda b: fp32_backbone.embed(b), texts, 16, seconds)
    int8_rate, _ = measure(lambda b: int8_backbone.embed(b), texts, 16, seconds)
    gate = int8_backbone.int8 or {}
    recipe = gate.get("recipe")
    cosine = f"{gate['measured'][recipe]['min_cosine']:.4f} ({recipe})" if recipe else "fp32 (no recipe met the bar)"
    fam = family_of(family)
    return (f"| {family} | {fam.optimizer or 'none (as exported)'} | {'yes' if fam.deep else 'no (head only)'} | "
            f"{export_s:.1f} | {parity['max_abs_diff']:.1e} ({parity_s:.1f} s) | {cosine} | "
            f"{fp32_rate:,.0f} | {int8_rate:,.0f} |")


def image_row(family: str, tmp: Path, seconds: float) -> str:
    from models import load_backbone
    from models.catalog import resolve_spec
    from models.export import ensure_artifact, ensure_text_tower
    from models.int8 import calibration_photos
    from models.parity import check_image, check_text_tower
    from tests.images import png
    from tests.tiny_models import make_tiny_image

    path = make_tiny_image(family, tmp / f"image-{family}")
    spec = resolve_spec(str(path))
    home = tmp / "home"
    started = time.perf_counter()
    fp32 = ensure_artifact(spec, "fp32", home)
    if spec.text_image:
        ensure_text_tower(spec, home)
    export_s = time.perf_counter() - started
    started = time.perf_counter()
    parity = f"{check_image(spec, home, fp32)['max_abs_diff']:.1e}"
    if spec.text_image:
        parity += f"; text tower {check_text_tower(spec, home, ensure_text_tower(spec, home)[0])['max_abs_diff']:.1e}"
    parity_s = time.perf_counter() - started
    backbone = load_backbone(str(path), home, precision="int8", intra_op_threads=0)
    pixels = list(calibration_photos(spec.image_size))
    graph_rate, _ = measure(lambda b: backbone.embed(b), pixels, 16, seconds)
    pngs = [png(seed) for seed in range(32)]  # 96 x 80 pictures
    decode_rate, _ = measure(lambda b: backbone.embed(b), pngs, 16, seconds)
    pre = spec.preprocessing
    kind, a, b = pre.resize
    how = ((f"resize {a} x {b}" if kind == "exact" else f"shortest edge to {a}")
           + (f", centre crop {pre.crop}" if pre.crop else "") + f", {pre.resample.lower()}")
    served = "fp32 (no int8 recipe)" if backbone.precision == "fp32" else backbone.precision
    return (f"| {family} | {spec.pooling} | {how} | {export_s:.1f} | {parity} ({parity_s:.1f} s) | {served} | "
            f"{graph_rate:,.0f} | {decode_rate:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from models.families import FAMILIES
    from tests.tiny_models import IMAGE_FAMILIES

    with tempfile.TemporaryDirectory() as tmp:
        rows = [row(f.name, Path(tmp), args.seconds) for f in FAMILIES]
        image_rows = [image_row(f, Path(tmp), args.seconds) for f in IMAGE_FAMILIES]
    table = "\n".join([
        "Tiny random-weight models (hidden 32, 2 layers, vocabularies of 300-400 trained here): export and "
        "gate figures are real for each family's graph; throughput is of these tiny graphs, not of real "
        f"checkpoints. {os.cpu_count()} CPUs; lscpu flags (int8-relevant): {cpu_flags()}.",
        "",
        "| family | ORT fusion | deep adapters | export + optimise s | parity fp32 max abs diff (gate time) "
        "| int8 gate min cosine | fp32 texts/s, batch 16 | served int8 texts/s, batch 16 |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Image families (tiny random-weight models, 32 x 32 inputs: ViT and CLIP's vision tower patches of 8, "
        "hidden 32, 2 layers; ConvNeXt and ResNet two stages of 8 and 16 channels; CLIP's text tower 2 layers, "
        "projection 16). Parity on the 44 calibration photo views (bar 1e-4); int8 asked for, fp32 served (no "
        "recipe for these families); images/s at batch 16: the graph on prepared pixels, and decode + "
        "preprocessing + graph from 96 x 80 PNGs (`ImageBackbone.embed`, one thread decoding).",
        "",
        "| family | pooling | preprocessing (preprocessor_config.json) | export s | parity fp32 max abs diff "
        "(gate time) | served | images/s, graph | images/s, decode + graph |",
        "|---|---|---|---|---|---|---|---|",
        *image_rows,
    ])
    publish(table, args.out, BEGIN, END)


if __name__ == "__main__":
    main()
