"""`make bench`: how close int8 stays to fp32, and what leaving layers in fp32 costs.

Compares the shipped int8 recipe (FFN input projections kept in fp32, see
models/catalog.py) with quantising every MatMul, on Rotten Tomatoes reviews plus very short
inputs, against the fp32 graph of the same export.
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from loadtests.common import measure, publish
from loadtests.data import rotten_tomatoes

BEGIN, END = "<!-- bench_int8:begin -->", "<!-- bench_int8:end -->"
SHORT = ["", "a", "?", "!", ".", "ok", "no", "yes", "cat", "hello world", "I loved it!!!", "Illuminating."]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reviews", type=int, default=1500)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from models.catalog import resolve_spec
    from models.export import _quantize_int8, ensure_artifact
    from models.runtime import OrtRunner
    from models.text import TextBackbone
    from service.settings import Settings

    home = Settings().home
    spec = resolve_spec("minilm-l6")
    reviews = [t for t, _ in rotten_tomatoes(args.reviews, seed=1)]
    fp32_path = ensure_artifact(spec, "fp32", home)
    fp32 = TextBackbone(spec, OrtRunner(fp32_path, "CPUExecutionProvider", "fp32"))

    with tempfile.TemporaryDirectory() as tmp:
        everything = Path(tmp) / "int8-all.onnx"
        _quantize_int8(dataclasses.replace(spec, int8_exclude=()), fp32_path, everything)
        variants = {
            "fp32 (reference)": fp32,
            "int8, FFN inputs fp32 (shipped)": TextBackbone(
                spec, OrtRunner(ensure_artifact(spec, "int8", home), "CPUExecutionProvider", "int8")),
            "int8, every MatMul": TextBackbone(spec, OrtRunner(everything, "CPUExecutionProvider", "int8")),
        }
        ref_reviews = np.concatenate([fp32.embed(reviews[i : i + 32]).vectors for i in range(0, len(reviews), 32)])
        ref_short = np.concatenate([fp32.embed([s]).vectors for s in SHORT])
        lines = [
            f"{len(reviews)} Rotten Tomatoes reviews (batches of 32) and {len(SHORT)} one-word or "
            "empty inputs (one at a time); cosine to the fp32 graph; speed at batch 32.",
            "",
            "| variant | reviews: min cosine | reviews: 1st percentile | reviews: mean | short inputs: min cosine | sentences/s | × fp32 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        base_rate = None
        for name, bb in variants.items():
            out = np.concatenate([bb.embed(reviews[i : i + 32]).vectors for i in range(0, len(reviews), 32)])
            cos = (out * ref_reviews).sum(1)
            short = (np.concatenate([bb.embed([s]).vectors for s in SHORT]) * ref_short).sum(1)
            rate, _ = measure(bb.embed, reviews, 32, args.seconds)
            base_rate = base_rate or rate
            lines.append(
                f"| {name} | {cos.min():.4f} | {np.percentile(cos, 1):.4f} | {cos.mean():.4f} | "
                f"{short.min():.4f} | {rate:.1f} | {rate / base_rate:.2f} |"
            )
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    publish(table, args.out, BEGIN, END)


if __name__ == "__main__":
    main()
