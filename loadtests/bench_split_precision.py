"""`make bench`: can the split graphs of deep adapters run int8 with rows independent of
their batch-mates? Static (calibrated) int8 of the lower graph, with and without
SmoothQuant, against fp32: min cosine of the final vectors to the fp32 whole graph on
reviews and on one-word inputs, the largest difference between a row computed alone and in
a batch, and sentences/s for a batch of 64 reviews (lower + upper, zero LoRA)."""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from loadtests.common import publish
from loadtests.data import rotten_tomatoes

BEGIN, END = "<!-- bench_split_precision:begin -->", "<!-- bench_split_precision:end -->"
SHORT = ["ok", "thanks!", "no", "great", "meh", "refund", "why?", "hello", "bad", "love it"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from models import load_backbone
    from models.export import ensure_split
    from models.int8 import calibration_texts, cpu_features, smooth_quant
    from models.split import stack_factors
    from service.settings import Settings

    home = Settings().home.resolve()
    backbone = load_backbone("minilm-l6", home, precision="fp32", split_layers=2)
    shape, tok = backbone.split_shape, backbone._tokenizer
    lower_fp32, _ = ensure_split(backbone.spec, shape, home)
    feeds = [dict(zip(("input_ids", "attention_mask"), tok.encode([t])[:2])) for t in calibration_texts()[::2]]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter(feeds)

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self.feeds, None)

    upper = backbone.split.upper
    reviews = [t for t, _ in rotten_tomatoes(300, seed=5)]

    def vectors(lower, texts: list[str], rows: int = 16) -> np.ndarray:  # type: ignore[no-untyped-def]
        out = []
        for i in range(0, len(texts), rows):
            ids, mask, _ = tok.encode(texts[i : i + rows])
            hidden = lower.run(None, {"input_ids": ids, "attention_mask": mask})[0]
            out.append(upper.run(hidden, mask, *stack_factors(shape, [None] * len(ids))))
        return np.concatenate(out)

    reference_reviews, reference_short = backbone.embed(reviews).vectors, backbone.embed(SHORT).vectors
    lines = [f"CPU: {cpu_features().machine}, flags {' '.join(cpu_features().flags)}; one run.", "",
             "| lower graph | min cosine, reviews | min cosine, one-word | row alone vs in batch (max abs) | "
             "sentences/s, batch 64 | × fp32 |", "|---|---:|---:|---:|---:|---:|"]
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        variants = [("fp32", lower_fp32)]
        for alpha in (None, 0.7):
            src = lower_fp32
            if alpha:
                src = Path(tmp) / f"smooth-{alpha}.onnx"
                smooth_quant(lower_fp32, src, feeds, alpha)
            for weights in ("QInt8", "QUInt8"):
                out = Path(tmp) / f"static-{alpha}-{weights}.onnx"
                quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                                activation_type=QuantType.QUInt8, weight_type=getattr(QuantType, weights),
                                op_types_to_quantize=["MatMul"])
                label = f"static int8 (u8 activations, {weights[1:].lower()} weights)"
                variants.append((label + (f" + SmoothQuant α {alpha}" if alpha else ""), out))
        for label, path in variants:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got_reviews, got_short = vectors(session, reviews), vectors(session, SHORT)
            independent = float(np.abs(vectors(session, reviews[:8], 1) - vectors(session, reviews[:8], 8)).max())
            ids, mask, _ = tok.encode(reviews[:64])

            def batch(session=session, ids=ids, mask=mask) -> None:  # type: ignore[no-untyped-def]
                hidden = session.run(None, {"input_ids": ids, "attention_mask": mask})[0]
                upper.run(hidden, mask, *stack_factors(shape, [None] * 64))

            batch()
            started = time.perf_counter()
            for _ in range(5):
                batch()
            speed = 64 * 5 / (time.perf_counter() - started)
            base = base or speed
            lines.append(f"| {label} | {(got_reviews * reference_reviews).sum(1).min():.4f} | "
                         f"{(got_short * reference_short).sum(1).min():.4f} | {independent:.1e} | {speed:.0f} | "
                         f"{speed / base:.2f} |")
            print(lines[-1], flush=True)
    publish("\n".join(lines), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
