"""`make bench`: which precision of the lower graph (embeddings + frozen layers of a split
text backbone, shared by every deep-adapter row) keeps each row independent of its
batch-mates, meets the text bar (min cosine ≥ 0.98 to fp32, reviews and one-word inputs),
and is fastest for a batch of deep rows?

Candidates, each at several rows per lower call:
- fp32, as exported and with ONNX Runtime's transformer fusions;
- dynamic int8 with the recipe the whole graph's gate chose on this CPU (one activation
  scale per call: rows affect each other unless each row is its own call);
- static int8 (calibrated scales) after SmoothQuant;
- per-token dynamic int8 after SmoothQuant: one activation scale per token, as plain ONNX
  (Abs, ReduceMax, Round, MatMulInteger; ORT has no fused per-row quantiser): the upper
  graph of every split recipe (models/int8.py choose_split), and the lower graph of the
  per-token recipes;
- ONNX Runtime's MatMulNBits, 8-bit weights in blocks of 32 with int8 compute
  (accuracy_level 4: activations quantised per row and block).
The upper graph (fp32, zero LoRA) runs 16 rows per call after every candidate; speed is
sentences/s of lower + upper over 256 length-sorted reviews, the best of three passes.
Last, the split recipes as served (lower and upper int8, LoRA rows) against head-only rows on
the whole graph, request by request in turn."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.common import publish
from loadtests.data import rotten_tomatoes

BEGIN, END = "<!-- bench_split_precision:begin -->", "<!-- bench_split_precision:end -->"
SHORT = ["ok", "thanks!", "no", "great", "meh", "refund", "why?", "hello", "bad", "love it"]
UPPER_ROWS = 16


def nbits_int8(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import matmul_nbits_quantizer as nbits

    config = nbits.DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(str(src)), bits=8, block_size=32, is_symmetric=True,
                                           accuracy_level=4, algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--served-only", action="store_true", help="only the served split recipes vs head-only rows")
    args = parser.parse_args()
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from models import load_backbone
    from models.export import _optimize, ensure_split
    from models.int8 import (RECIPES, _quantize_split, _quantize_text, calibration_texts, candidates, choose_int8,
                             cpu_features, smooth_quant)
    from models.split import stack_factors
    from service.settings import Settings

    home = Settings().home.resolve()
    backbone = load_backbone("minilm-l6", home, precision="fp32", split_layers=2)
    shape, tok, spec = backbone.split_shape, backbone._tokenizer, backbone.spec
    lower_fp32, _ = ensure_split(spec, shape, home)
    recipe = choose_int8(spec, home).recipe
    feeds = [dict(zip(("input_ids", "attention_mask"), tok.encode([t])[:2])) for t in calibration_texts()[::2]]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.feeds, None)

    upper = backbone.split.upper
    reviews = [t for t, _ in rotten_tomatoes(300, seed=5)][:256]
    reviews.sort(key=lambda t: len(tok.tokenize([t])[0]))  # as served: length-sorted sub-batches

    def vectors(lower: Any, texts: list[str], rows: int) -> np.ndarray:
        out = []
        for i in range(0, len(texts), UPPER_ROWS):
            ids, mask, _ = tok.encode(texts[i : i + UPPER_ROWS])
            parts = []
            for j in range(0, len(ids), rows):
                width = int(mask[j : j + rows].sum(1).max())  # a lone row at its own length
                part = np.zeros((min(rows, len(ids) - j), ids.shape[1], shape.hidden), np.float32)
                part[:, :width] = lower.run(None, {"input_ids": ids[j : j + rows, :width],
                                                   "attention_mask": mask[j : j + rows, :width]})[0]
                parts.append(part)
            out.append(upper.run(np.concatenate(parts), mask, *stack_factors(shape, [None] * len(ids))))
        return np.concatenate(out)

    reference_reviews, reference_short = backbone.embed(reviews).vectors, backbone.embed(SHORT).vectors
    cpu = cpu_features()
    lines = [f"CPU: {cpu.machine}, flags {' '.join(cpu.flags)}; one run. The upper graph (fp32) runs "
             f"{UPPER_ROWS} rows per call after every lower graph.", "",
             "| lower graph | rows per lower call | min cosine, reviews | min cosine, one-word | "
             "row alone vs in batch (max abs) | sentences/s | × fp32 (16 rows) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    base = None
    if not args.served_only:
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            fused = t / "fused.onnx"
            _optimize(spec, lower_fp32, fused, use_gpu=False)
            smoothed = t / "smooth.onnx"
            smooth_quant(lower_fp32, smoothed, feeds, 0.7)
            variants: list[tuple[str, Path, tuple[int, ...]]] = [
                ("fp32", lower_fp32, (16, 1, 64)), ("fp32, ORT transformer fusions", fused, (16, 64))]
            if recipe:
                _quantize_text(spec, fused, t / "dynamic.onnx", RECIPES[recipe])
                variants.append((f"dynamic int8 ({recipe}, the whole graph's recipe here), fused", t / "dynamic.onnx",
                                 (1, 16)))
            quantize_static(str(smoothed), str(t / "static.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=["MatMul"])
            variants.append(("static int8 (u8 activations, int8 weights) + SmoothQuant α 0.7", t / "static.onnx",
                             (16, 64)))
            per_token = candidates("split", cpu)[0]
            _quantize_split(spec, shape, lower_fp32, t / "per-token.onnx", RECIPES[per_token], lower_fp32)
            variants.append((f"per-token dynamic int8 + SmoothQuant α 0.7 ({per_token}'s lower graph)",
                             t / "per-token.onnx", (16, 64)))
            nbits_int8(lower_fp32, t / "nbits.onnx")
            variants.append(("MatMulNBits, 8-bit weights in blocks of 32, int8 compute", t / "nbits.onnx", (16, 64)))
            for label, path, batches in variants:
                opts = ort.SessionOptions()
                session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                for rows in batches:
                    got_reviews, got_short = vectors(session, reviews, rows), vectors(session, SHORT, rows)
                    alone = vectors(session, reviews[::16], 1)
                    independent = float(np.abs(alone - got_reviews[::16]).max()) if rows > 1 else 0.0
                    passes = []
                    for _ in range(3):
                        started = time.perf_counter()
                        vectors(session, reviews, rows)
                        passes.append(time.perf_counter() - started)
                    speed = len(reviews) / min(passes)
                    if base is None:
                        base = speed
                    lines.append(f"| {label} | {rows} | {(got_reviews * reference_reviews).sum(1).min():.4f} | "
                                 f"{(got_short * reference_short).sum(1).min():.4f} | "
                                 f"{'(alone)' if rows == 1 else f'{independent:.1e}'} | {speed:.0f} | {speed / base:.2f} |")
                    print(lines[-1], flush=True)
    # As served: each split recipe this CPU offers (lower and upper graphs, 16 LoRA rows of
    # one adapter per request, as embed_deep serves them), and head-only rows on the whole graph,
    # request by request in turn (the host drifts), the total time of each over 3 passes.
    from models.int8 import split_recipe
    from models.runtime import OrtRunner
    from models.text import SplitRunner, TextBackbone
    from tests.unit.test_deep import random_factors

    served = load_backbone("minilm-l6", home, split_layers=2)
    lora = random_factors(shape, 8, seed=1)
    embeds = {}
    for name in candidates("split", cpu):
        low, up = split_recipe(spec, shape, home, name)
        split = SplitRunner(shape, OrtRunner(low, "CPUExecutionProvider", "int8", spinning=False),
                            OrtRunner(up, "CPUExecutionProvider", "int8", spinning=False))  # as loaded
        backbone = TextBackbone(spec, served._runner, split)
        embeds[f"split graphs {name}, 16 LoRA rows per request"] = (
            lambda texts, b=backbone: b.embed_deep(texts, [None] * len(texts)).vectors,
            lambda texts, b=backbone: b.embed_deep(texts, [lora] * len(texts)).vectors)
    head = f"head-only rows: the whole graph ({served.precision}, {served.max_rows} row per call)"
    embeds[head] = (lambda texts: served.embed(texts).vectors,) * 2
    spent = dict.fromkeys(embeds, 0.0)
    requests = [reviews[i : i + UPPER_ROWS] for i in range(0, len(reviews), UPPER_ROWS)]
    for n, request in enumerate(requests * 3):
        names = list(embeds)
        for label in names[n % len(names):] + names[: n % len(names)]:
            started = time.perf_counter()
            embeds[label][1](request)
            spent[label] += time.perf_counter() - started
    for label, (plain, _) in embeds.items():
        got_reviews = np.concatenate([plain(r) for r in requests])
        speed = 3 * len(reviews) / spent[label]
        lines.append(f"| {label} | {UPPER_ROWS} | {(got_reviews * reference_reviews).sum(1).min():.4f} | "
                     f"{(plain(SHORT) * reference_short).sum(1).min():.4f} | | {speed:.0f} | {speed / base if base else float('nan'):.2f} "
                     f"(× head-only {speed * spent[head] / (3 * len(reviews)):.2f}) |")
        print(lines[-1], flush=True)
    if args.served_only:
        return
    publish("\n".join(lines), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
