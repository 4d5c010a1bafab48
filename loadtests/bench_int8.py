"""`make bench`: the int8 recipes on this CPU, against fp32 of the same export.

Text: every recipe of models/int8.py plus the recipe served before the gate (dynamic u8s8,
FFN inputs kept fp32), on the gate's calibration texts, on held-out Rotten Tomatoes reviews
and on one-word or empty inputs, one row per ORT call (as int8 is served), with speed.
Images: the recipe plus qdq-u8u8 (exact everywhere, for its speed) on the shipped photos,
with top-1 agreement of the ImageNet classifier. The last column says what the gate does
with each recipe on this CPU.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from loadtests.common import measure, publish
from loadtests.data import rotten_tomatoes

BEGIN, END = "<!-- bench_int8:begin -->", "<!-- bench_int8:end -->"
SHORT = ["", "a", "?", "!", ".", "ok", "no", "yes", "cat", "hello world", "thanks!", "I loved it!!!", "Illuminating."]


def _verdict(name: str, kind: str, served: str | None) -> str:
    from models import int8

    if name not in int8.RECIPES:
        return "not a recipe (comparison)"
    if name not in int8.candidates(kind, int8.cpu_features()):
        return "not a candidate on this CPU"
    return "**served**" if name == served else "gated, refused"


def text_rows(home: Path, seconds: float, reviews: list[str], tmp: Path) -> list[str]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from models import int8
    from models.catalog import resolve_spec
    from models.export import ensure_artifact
    from models.runtime import OrtRunner
    from models.text import TextBackbone

    spec = resolve_spec("minilm-l6")
    fp32_path = ensure_artifact(spec, "fp32", home)
    before = tmp / "int8-before.onnx"  # the recipe served before the gate (issue #12)
    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    quantize_dynamic(str(fp32_path), str(before), per_channel=True, weight_type=QuantType.QInt8,
                     op_types_to_quantize=["MatMul", "Attention"],
                     nodes_to_exclude=[n.name for n in graph.node if "intermediate/dense/MatMul" in n.name],
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    paths = {"fp32 (reference)": fp32_path, "dynamic u8s8, FFN inputs fp32 (before the gate)": before}
    paths.update({name: int8.ensure_int8(spec, name, home) for name, r in int8.RECIPES.items() if r["kind"] == "text"})
    served = int8.choose_int8(spec, home).recipe
    calibration = int8.calibration_texts()

    def one_by_one(bb: TextBackbone, texts: list[str]) -> np.ndarray:
        return np.concatenate([bb.embed([t]).vectors for t in texts])

    fp32 = TextBackbone(spec, OrtRunner(fp32_path, "CPUExecutionProvider", "fp32"))
    refs = [one_by_one(fp32, texts) for texts in (calibration, reviews, SHORT)]
    lines = [
        "| text recipe | gate set: min | gate set: 1st pct | reviews: min | reviews: 1st pct | reviews: mean "
        "| short inputs: min | sentences/s (row by row) | × fp32 | on this CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    base = None
    for name, path in paths.items():
        bb = TextBackbone(spec, OrtRunner(path, "CPUExecutionProvider", "int8"))  # int8: one row per call
        cos = [(one_by_one(bb, texts) * ref).sum(1) for texts, ref in zip((calibration, reviews, SHORT), refs)]
        rate, _ = measure(bb.embed, reviews, 1, seconds)
        base = base or rate
        verdict = "reference" if path == fp32_path else _verdict(name, "text", served)
        lines.append(
            f"| {name} | {cos[0].min():.4f} | {np.percentile(cos[0], 1):.4f} | {cos[1].min():.4f} | "
            f"{np.percentile(cos[1], 1):.4f} | {cos[1].mean():.4f} | {cos[2].min():.4f} | {rate:.1f} | "
            f"{rate / base:.2f} | {verdict} |"
        )
        print(lines[-1], flush=True)
    return lines


def image_rows(home: Path, seconds: float, tmp: Path) -> list[str]:
    from models import int8
    from models.catalog import resolve_spec
    from models.export import ensure_artifact
    from models.runtime import OrtRunner

    spec = resolve_spec("efficientnet-lite0")
    fp32_path = ensure_artifact(spec, "fp32", home)
    u8u8 = tmp / "qdq-u8u8.onnx"
    int8._quantize_image(spec, fp32_path.with_name("raw.onnx"), u8u8,
                         {**int8.RECIPES["qdq-u8s8"], "weights": "QUInt8"})
    paths = {"fp32 (reference)": fp32_path, "qdq-u8s8": int8.ensure_int8(spec, "qdq-u8s8", home),
             "qdq-u8u8 (exact everywhere)": u8u8}
    served = int8.choose_int8(spec, home).recipe
    pixels = int8.calibration_photos(spec.image_size)
    lines = [
        "| image recipe | photos: min cosine | photos: mean | top-1 agreement (ImageNet) | images/s (8 per call) "
        "| × fp32 | on this CPU |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    base = None
    for name, path in paths.items():
        figures = int8._measure_image(spec, fp32_path, path)
        runner = OrtRunner(path, "CPUExecutionProvider", "int8")
        rate, _ = measure(lambda ix: runner.run(pixels[ix]), list(range(len(pixels))), 8, seconds)
        base = base or rate
        verdict = "reference" if path == fp32_path else _verdict(name, "image", served)
        lines.append(f"| {name} | {figures['min_cosine']:.4f} | {figures['mean_cosine']:.4f} | "
                     f"{figures['top1_agreement']:.3f} | {rate:.1f} | {rate / base:.2f} | {verdict} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reviews", type=int, default=1500)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from models import int8
    from service.settings import Settings

    home = Settings().home
    reviews = [t for t, _ in rotten_tomatoes(args.reviews, seed=1)]
    cpu = int8.cpu_features()
    with tempfile.TemporaryDirectory() as tmp:
        lines = [
            f"CPU: {cpu.describe()} (kernel-relevant `lscpu` flags; none of avx512f, avx512_vnni, avx_vnni, "
            f"amx_int8 means u8 x s8 sums saturate). Cosine to the fp32 graph of the same export. Gate set: "
            f"the {len(int8.calibration_texts())} shipped texts (models/calibration/texts.json; half of them set "
            f"the SmoothQuant scales); reviews: {len(reviews)} held-out Rotten Tomatoes reviews; short inputs: "
            f"{len(SHORT)} one-word or empty texts. Speed: reviews one per ORT call, as int8 is served.",
            "",
            *text_rows(home, args.seconds, reviews, Path(tmp)),
            "",
            f"Photos: {len(int8.calibration_photos())} views (4 crops each) of the shipped public-domain photos "
            "(models/calibration/photos); top-1 agreement of the backbone's own ImageNet classifier.",
            "",
            *image_rows(home, args.seconds, Path(tmp)),
        ]
    publish("\n".join(lines), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
