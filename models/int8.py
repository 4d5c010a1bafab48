"""int8 recipes and the accuracy gate that decides, on this processor, whether one is served.

ONNX Runtime's integer kernels differ between processors: on x86 without VNNI, the u8 x s8
path multiplies pairs into a saturating 16-bit intermediate, so the same int8 graph that is
accurate on an AVX-512 VNNI server loses accuracy on an AVX2-only node. u8 x u8 takes a
widening path with exact sums on every x86 kernel, and ARM's dot-product kernels are exact
for both. So:

* recipes are named and built once per artifact (the graph does not depend on the CPU);
* the candidates for a CPU are chosen from its features (u8s8 only where it is exact);
* a gate runs every candidate against the fp32 graph on a fixed calibration set shipped in
  models/calibration/ (real sentences incl. one-word and empty ones; real photos), on this
  machine's kernels, and serves the first that meets the bar, else fp32. Its verdict is
  kept per CPU key (the features that change kernels), so another processor re-gates.

Text recipes apply SmoothQuant (Xiao et al. 2023): per input channel, activations are
divided by s and the weight rows multiplied by s, so the outlier channels of BERT-style
encoders no longer set the per-tensor activation scale of dynamic quantisation.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.catalog import BackboneSpec
from models.export import artifact_dir, atomic_write, ensure_artifact, locked, require, verdict_file

log = logging.getLogger(__name__)

CALIBRATION_DIR = Path(__file__).parent / "calibration"

# Bars the gate applies (and the tests hold). Images: static int8 of a depthwise CNN is
# looser than text; top-1 agreement on the ImageNet classes of the backbone's own classifier
# says whether the features still mean the same thing.
TEXT_BAR = {"min_cosine": 0.98}
IMAGE_BAR = {"min_cosine": 0.85, "mean_cosine": 0.96, "top1_agreement": 0.90}

RECIPES: dict[str, dict[str, Any]] = {
    # Dynamic quantisation (per-tensor uint8 activations chosen per call, per-channel weights)
    # of every MatMul and fused Attention, after SmoothQuant with alpha 0.7.
    "smoothquant-u8u8": {"kind": "text", "weights": "QUInt8", "smooth_alpha": 0.7, "exact_on": "all"},
    "smoothquant-u8s8": {"kind": "text", "weights": "QInt8", "smooth_alpha": 0.7, "exact_on": "vnni-or-arm"},
    # Static QDQ, scales calibrated once on synthetic pictures (rows never affect each other).
    # Clip (ReLU6) and Add are listed so a Conv's output is quantised over the ReLU6 range.
    # Split graphs of deep adapters (choose_split): per-token dynamic int8 after SmoothQuant.
    "per-token-u8s8": {"kind": "split", "weights": "QInt8", "smooth_alpha": 0.7, "exact_on": "vnni-or-arm"},
    "per-token-u8u8": {"kind": "split", "weights": "QUInt8", "smooth_alpha": 0.7, "exact_on": "all"},
    "qdq-u8s8": {"kind": "image", "activations": "QUInt8", "weights": "QInt8", "op_types": ["Conv", "Clip", "Add"],
                 "calibration_images": 48, "exact_on": "vnni-or-arm"},
}


# -- the processor ---------------------------------------------------------------------------

KERNEL_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


@dataclass(frozen=True)
class CpuFeatures:
    machine: str  # platform.machine(): x86_64, aarch64, ...
    flags: tuple[str, ...]  # the subset of KERNEL_FLAGS this CPU has

    @property
    def arm(self) -> bool:
        return self.machine.lower() in ("aarch64", "arm64")

    @property
    def exact_u8s8(self) -> bool:
        """u8 x s8 sums are exact: VNNI / AMX on x86 (32-bit accumulation), any ARM64."""
        return self.arm or any(f in self.flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))

    @property
    def key(self) -> str:
        return f"{self.machine}-" + (hashlib.sha256(",".join(self.flags).encode()).hexdigest()[:8])

    def describe(self) -> str:
        return f"{self.machine} [{' '.join(self.flags) or 'no int8 extensions'}]"


def cpu_features(cpuinfo: str | None = None) -> CpuFeatures:
    """The kernel-relevant features of this CPU, from /proc/cpuinfo (Linux)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    words: set[str] = set()
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            words.update(value.split())
    return CpuFeatures(platform.machine() or "unknown", tuple(f for f in KERNEL_FLAGS if f in words))


def candidates(kind: str, cpu: CpuFeatures) -> list[str]:
    """Recipes worth gating on this CPU, fastest first. u8s8 is left out where its sums
    saturate; images get no int8 there at all (u8u8 QLinearConv measured 4x slower than
    fp32 on AVX2, docs/BENCHMARKS.md), so they serve fp32."""
    out = []
    for name, recipe in RECIPES.items():
        if recipe["kind"] != kind:
            continue
        if recipe["exact_on"] == "vnni-or-arm" and not cpu.exact_u8s8:
            continue
        out.append(name)
    return sorted(out, key=lambda n: RECIPES[n]["exact_on"] == "all")  # CPU-specific first


# -- building recipes --------------------------------------------------------------------------


def ensure_int8(spec: BackboneSpec, recipe: str, home: Path) -> Path:
    """The int8 graph of one recipe (built once per artifact; CPU-independent)."""
    if recipe not in RECIPES or RECIPES[recipe]["kind"] != spec.kind:
        known = [n for n, r in RECIPES.items() if r["kind"] == spec.kind]
        raise ValueError(f"unknown int8 recipe {recipe!r} for a {spec.kind} backbone: use one of {known}")
    folder = artifact_dir(spec, home)
    target = folder / recipe_file(recipe)
    if target.is_file():
        return target
    require(spec, home, (target,), f"the int8 graph of recipe {recipe}")
    source = ensure_artifact(spec, "fp32", home)
    with locked(folder / ".lock"):
        if not target.is_file():
            started = time.perf_counter()
            with atomic_write(target) as tmp:
                if spec.kind == "image":
                    _quantize_image(spec, source.with_name("raw.onnx"), tmp, RECIPES[recipe])
                else:
                    _quantize_text(spec, source, tmp, RECIPES[recipe])
            log.info("built %s int8 recipe %s in %.1f s", spec.id, recipe, time.perf_counter() - started)
    return target


def recipe_file(recipe: str) -> str:
    """File name of a recipe's graph; it changes when the recipe does."""
    digest = hashlib.sha256(json.dumps(RECIPES[recipe], sort_keys=True).encode()).hexdigest()[:8]
    return f"int8-{recipe}-{digest}.onnx"


def _gate_version() -> str:
    """Changes when the recipes, the bars or the calibration set change: the gate reruns."""
    h = hashlib.sha256(json.dumps([RECIPES, TEXT_BAR, IMAGE_BAR], sort_keys=True).encode())
    for path in sorted(CALIBRATION_DIR.rglob("*")):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:8]


def calibration_texts() -> list[str]:
    return list(json.loads((CALIBRATION_DIR / "texts.json").read_text())["texts"])


def _quantize_text(spec: BackboneSpec, fp32: Path, out: Path, recipe: dict[str, Any]) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from models.text import load_tokenizer

    tokenizer = load_tokenizer(spec)
    feeds = []
    for text in calibration_texts()[::2]:  # half set the scales; the gate measures on all
        ids, mask, _ = tokenizer.encode([text])
        feeds.append({"input_ids": ids, "attention_mask": mask})
    smoothed = out.with_name(out.stem + ".smooth.onnx")
    try:
        smooth_quant(fp32, smoothed, feeds, recipe["smooth_alpha"])
        quantize_dynamic(
            str(smoothed), str(out),
            per_channel=True,
            weight_type=getattr(QuantType, recipe["weights"]),
            op_types_to_quantize=["MatMul", "Attention"],
            # The fused Attention/SkipLayerNorm ops are in the com.microsoft domain, where
            # shape inference gives no types; their outputs are float.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    finally:
        smoothed.unlink(missing_ok=True)


def smooth_quant(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], alpha: float) -> None:
    """Insert x / s before every MatMul (and fused Attention) with a constant weight and fold
    s into the weight rows: s_j = max|x_j|^alpha / max|W_j|^(1 - alpha), with max|x_j| seen
    over `feeds`. The graph computes the same function in fp32; int8 of it loses far less."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    targets = [n for n in graph.node if n.op_type in ("MatMul", "Attention") and n.input[1] in weights]
    observed = sorted({n.input[0] for n in targets})

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in observed:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    amax: dict[str, np.ndarray] = {}
    for feed in feeds:
        values = session.run(observed, feed)
        for name, value in zip(observed, values):
            m = np.abs(value.reshape(-1, value.shape[-1])).max(0)
            amax[name] = np.maximum(amax[name], m) if name in amax else m

    for node in targets:
        w = numpy_helper.to_array(weights[node.input[1]])
        s = amax[node.input[0]] ** alpha / np.maximum(np.abs(w).max(1), 1e-5) ** (1 - alpha)
        s = np.clip(s, 1e-2, 1e3).astype(np.float32)
        weights[node.input[1]].CopyFrom(numpy_helper.from_array((w * s[:, None]).astype(np.float32), node.input[1]))
        inverse = f"{node.name}_smooth_inverse"
        graph.initializer.append(numpy_helper.from_array((1 / s).astype(np.float32), inverse))
        smoothed = f"{node.input[0]}_{node.name}_smoothed"
        graph.node.append(helper.make_node("Mul", [node.input[0], inverse], [smoothed], name=f"{node.name}_smooth"))
        node.input[0] = smoothed
    _sort_topologically(graph)
    onnx.save(model, str(dst))


def _sort_topologically(graph: Any) -> None:
    ready = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = [n for n in pending if not all(x in ready for x in n.input)]
        for n in pending:
            if n not in rest:
                ordered.append(n)
                ready.update(n.output)
        if len(rest) == len(pending):
            raise ValueError("the graph has a cycle or an input nobody produces")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def _quantize_image(spec: BackboneSpec, raw: Path, out: Path, recipe: dict[str, Any]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from models.image import calibration_images

    images = calibration_images(recipe["calibration_images"], spec.image_size)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = iter([{"pixels": images[i : i + 8]} for i in range(0, len(images), 8)])

        def get_next(self):  # type: ignore[no-untyped-def]
            return next(self._batches, None)

    prepared = out.with_name(out.stem + ".pre.onnx")
    try:
        quant_pre_process(str(raw), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out), Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=getattr(QuantType, recipe["activations"]),
            weight_type=getattr(QuantType, recipe["weights"]),
            op_types_to_quantize=recipe["op_types"],
            calibrate_method=CalibrationMethod.MinMax,
        )
    finally:
        prepared.unlink(missing_ok=True)


# -- the gate ----------------------------------------------------------------------------------


@dataclass
class Int8Choice:
    """What the gate decided for one backbone on one CPU: the path and precision served."""

    path: Path
    precision: str  # "int8" or "fp32" (fallback)
    recipe: str | None
    cpu: str
    measured: dict[str, dict[str, float]] = field(default_factory=dict)  # recipe -> figures
    reason: str = ""

    def describe(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("path")
        return out


def choose_int8(spec: BackboneSpec, home: Path, cpu: CpuFeatures | None = None) -> Int8Choice:
    """Gate the candidate recipes on this CPU (once per CPU key; the verdict is kept beside
    the artifacts) and return the first that meets the bar, or the fp32 graph."""
    cpu = cpu or cpu_features()
    folder = artifact_dir(spec, home)
    fp32 = ensure_artifact(spec, "fp32", home)
    # Prepared artifacts: the verdict `prepare` measured on this kind of CPU, else one measured
    # here (ONNX Runtime only, on the prepared graphs) and kept in this process's GRAFT_HOME.
    gate_file = verdict_file(spec, home, f"int8-gate-{cpu.key}-{_gate_version()}.json")
    if not gate_file.is_file():
        # Image directories (ViT, ConvNeXt, ResNet, CLIP) have no recipe: the image recipe is
        # EfficientNet's (Conv/Clip/Add; its gate reads the ImageNet classifier's top-1), so they
        # serve fp32 and the verdict says why.
        names = [] if spec.hf_image else candidates(spec.kind, cpu)
        paths = {name: ensure_int8(spec, name, home) for name in names}
        with locked(gate_file.parent / ".lock"):
            if not gate_file.is_file():
                verdict = gate(spec, fp32, paths, cpu)
                with atomic_write(gate_file) as tmp:
                    tmp.write_text(json.dumps(verdict, indent=2))
    verdict = json.loads(gate_file.read_text())
    recipe = verdict["recipe"]
    choice = Int8Choice(
        path=folder / recipe_file(recipe) if recipe else fp32,
        precision="int8" if recipe else "fp32",
        recipe=recipe, cpu=verdict["cpu"], measured=verdict["measured"], reason=verdict["reason"],
    )
    log_fn = log.info if recipe else log.warning
    log_fn("%s int8 gate on %s: %s", spec.id, choice.cpu, choice.reason)
    return choice


def gate(spec: BackboneSpec, fp32: Path, recipes: dict[str, Path], cpu: CpuFeatures) -> dict[str, Any]:
    """Measure each recipe against fp32 on the shipped calibration set; the first that meets
    the bar wins. Returns the verdict (JSON-able)."""
    bar = IMAGE_BAR if spec.kind == "image" else TEXT_BAR
    measure = _measure_image if spec.kind == "image" else _measure_text
    chosen, measured, misses = first_meeting(bar, {name: (lambda p=path: measure(spec, fp32, p))
                                                   for name, path in recipes.items()})
    if chosen:
        figures = measured[chosen]
        reason = f"serving int8 recipe {chosen} (" + ", ".join(f"{k} {figures[k]:.4f}" for k in bar) + ")"
    elif recipes:
        reason = "serving fp32: no int8 recipe met the bar on this CPU (" + "; ".join(misses) + ")"
    elif spec.hf_image:
        reason = (f"serving fp32: no int8 recipe for {spec.family} image backbones (the image recipe and its "
                  "top-1 gate are EfficientNet's)")
    else:
        reason = (f"serving fp32: no int8 recipe for {spec.kind} backbones is exact on this CPU "
                  "(u8 x s8 sums saturate without VNNI; see docs/BENCHMARKS.md)")
    return {"recipe": chosen, "cpu": cpu.describe(), "bar": bar, "measured": measured, "reason": reason}


def first_meeting(bar: dict[str, float], measures: dict[str, Any]) -> tuple[str | None, dict[str, Any], list[str]]:
    """Run `measures` (recipe -> a call returning its figures) in order until one meets every
    figure of `bar`: that recipe (or None), the figures of those measured, and the misses."""
    measured: dict[str, dict[str, float]] = {}
    misses: list[str] = []
    for name, measure in measures.items():
        figures = measured[name] = measure()
        missed = [f"{k} {figures[k]:.4f} < {v}" for k, v in bar.items() if figures[k] < v]
        if not missed:
            return name, measured, misses
        misses.append(f"{name}: {', '.join(missed)}")
    return None, measured, misses


def _session(path: Path):  # -> ort.InferenceSession
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _summary(cosine: np.ndarray) -> dict[str, float]:
    return {"min_cosine": float(cosine.min()), "p1_cosine": float(np.percentile(cosine, 1)),
            "mean_cosine": float(cosine.mean()), "items": float(len(cosine))}


def _measure_text(spec: BackboneSpec, fp32: Path, int8: Path) -> dict[str, float]:
    """Row by row, as int8 text is served (dynamic scales are per call)."""
    from models.text import load_tokenizer

    tokenizer = load_tokenizer(spec)
    ref, got = _session(fp32), _session(int8)
    cosine = []
    for text in calibration_texts():
        ids, mask, _ = tokenizer.encode([text])
        feeds = {"input_ids": ids, "attention_mask": mask}
        a, b = ref.run(["embeddings"], feeds)[0][0], got.run(["embeddings"], feeds)[0][0]
        cosine.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return _summary(np.array(cosine))


def calibration_photos(size: int = 224) -> np.ndarray:
    """Four views (centre and three off-centre crops) of each shipped photo, as uint8 pixels."""
    from PIL import Image

    views = []
    for path in sorted(glob.glob(str(CALIBRATION_DIR / "photos" / "*.jpg"))):
        with Image.open(path) as img:
            img = img.convert("RGB")
        w, h = img.size
        s = min(w, h)
        for box in ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2), (0, 0, s * 0.6, s * 0.6), \
                   (w - s * 0.6, h - s * 0.6, w, h), (w * 0.2, h * 0.3, w * 0.2 + s * 0.45, h * 0.3 + s * 0.45):
            views.append(np.asarray(img.resize((size, size), Image.Resampling.BICUBIC, box=box), dtype=np.uint8))
    return np.stack(views)


def _measure_image(spec: BackboneSpec, fp32: Path, int8: Path) -> dict[str, float]:
    """Cosine of the pooled features and top-1 agreement of the backbone's ImageNet classifier
    (the graph's second output) on the shipped photos."""
    pixels = calibration_photos(spec.image_size)
    outputs = ["embeddings", "logits"]
    ref, got = _session(fp32), _session(int8)
    a = [ref.run(outputs, {"pixels": pixels[i : i + 8]}) for i in range(0, len(pixels), 8)]
    b = [got.run(outputs, {"pixels": pixels[i : i + 8]}) for i in range(0, len(pixels), 8)]
    ea, eb = np.concatenate([x[0] for x in a]), np.concatenate([x[0] for x in b])
    top_a, top_b = np.concatenate([x[1] for x in a]).argmax(1), np.concatenate([x[1] for x in b]).argmax(1)
    cosine = (ea * eb).sum(1) / np.linalg.norm(ea, axis=1) / np.linalg.norm(eb, axis=1)
    return {**_summary(cosine), "top1_agreement": float((top_a == top_b).mean())}


# -- the split graphs of a text backbone (deep adapters) ------------------------------------


def choose_split(spec: BackboneSpec, shape: Any, home: Path, cpu: CpuFeatures | None = None) -> Int8Choice:
    """The lower and upper graphs deep-adapter rows share, int8 where the gate allows.

    Their rows must not depend on each other (many tenants' rows share every call), so
    dynamic int8 with one activation scale per call is out; static scales missed the text bar
    (docs/BENCHMARKS.md). The split recipes quantise activations per token instead (SmoothQuant
    first, as for the whole graph), so rows share calls and stay independent; LoRA's own
    MatMuls (per-row factors, graph inputs) stay fp32. The gate measures lower + upper int8
    against the fp32 whole graph on the calibration texts; `path` is the lower graph, the
    upper one sits beside it (`split_paths`)."""
    from models.export import ensure_split

    cpu = cpu or cpu_features()
    lower, upper = ensure_split(spec, shape, home)
    fp32 = ensure_artifact(spec, "fp32", home)  # before the lock (it takes it to build)
    gate_file = verdict_file(spec, home, f"{lower.stem}-gate-{cpu.key}-{_gate_version()}.json")
    names = candidates("split", cpu)

    def build(name: str) -> tuple[Path, Path]:
        return _build_split(spec, shape, lower, upper, name)

    if not gate_file.is_file():  # (a kept verdict is read without the lock: prepared artifacts are read-only)
        with locked(gate_file.parent / ".lock"):
            if not gate_file.is_file():
                # Fastest first; each candidate built only when it is measured.
                chosen, measured, misses = first_meeting(TEXT_BAR, {
                    name: (lambda n=name: _measure_split(spec, shape, fp32, *build(n))) for name in names})
                reason = (f"split graphs int8 {chosen} (min_cosine {measured[chosen]['min_cosine']:.4f})" if chosen
                          else "split graphs fp32: " + ("; ".join(misses) or "no split recipe for this CPU"))
                verdict = {"recipe": chosen, "cpu": cpu.describe(), "measured": measured, "reason": reason}
                with atomic_write(gate_file) as tmp:
                    tmp.write_text(json.dumps(verdict, indent=2))
    verdict = json.loads(gate_file.read_text())
    chosen = verdict["recipe"]
    if chosen and not all(p.is_file() for p in split_paths(lower, upper, chosen)):
        require(spec, home, split_paths(lower, upper, chosen), f"the split graphs of int8 recipe {chosen}")
        with locked(artifact_dir(spec, home) / ".lock"):
            build(chosen)  # its graphs may have been deleted since the verdict (prepared: refused, named)
    log.info("%s split at layer %d: %s", spec.id, shape.split, verdict["reason"])
    return Int8Choice(split_paths(lower, upper, chosen)[0] if chosen else lower, "int8" if chosen else "fp32",
                      chosen, verdict["cpu"], verdict["measured"], verdict["reason"])


def split_recipe(spec: BackboneSpec, shape: Any, home: Path, recipe: str) -> tuple[Path, Path]:
    """The lower and upper int8 graphs of one split recipe, built if missing, whatever the gate
    chose (benchmarks compare them)."""
    from models.export import ensure_split

    lower, upper = ensure_split(spec, shape, home)
    with locked(artifact_dir(spec, home) / ".lock"):
        return _build_split(spec, shape, lower, upper, recipe)


def _build_split(spec: BackboneSpec, shape: Any, lower: Path, upper: Path, recipe: str) -> tuple[Path, Path]:
    """Under the artifact folder's lock."""
    paths = split_paths(lower, upper, recipe)
    require(spec, lower.parents[2], paths, f"the split graphs of int8 recipe {recipe}")  # home/backbones/<key>/
    for src, target in zip((lower, upper), paths):
        if not target.is_file():
            with atomic_write(target) as tmp:
                _quantize_split(spec, shape, src, tmp, RECIPES[recipe], lower)
    return paths


def split_paths(lower: Path, upper: Path, recipe: str) -> tuple[Path, Path]:
    """The int8 lower and upper graphs of a split recipe."""
    return lower.with_name(f"{lower.stem}-{recipe_file(recipe)}"), upper.with_name(f"{upper.stem}-{recipe_file(recipe)}")


def _quantize_split(spec: BackboneSpec, shape: Any, src: Path, out: Path, recipe: dict[str, Any],
                    lower: Path) -> None:
    """SmoothQuant on activations seen for the calibration texts, then per-token int8."""
    import onnxruntime as ort

    from models.split import stack_factors
    from models.text import load_tokenizer

    tokenizer = load_tokenizer(spec)
    feeds = [dict(zip(("input_ids", "attention_mask"), tokenizer.encode([t])[:2])) for t in calibration_texts()[::2]]
    if src != lower:  # the upper graph's inputs: the fp32 lower graph's output, no LoRA
        low = ort.InferenceSession(str(lower), providers=["CPUExecutionProvider"])
        names = [i.name for i in ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()]
        feeds = [{"hidden": low.run(None, f)[0], "attention_mask": f["attention_mask"],
                  **dict(zip(names[2:], stack_factors(shape, [None])))} for f in feeds]
    smoothed = out.with_name(out.stem + ".smooth.onnx")
    try:
        smooth_quant(src, smoothed, feeds, recipe["smooth_alpha"])
        per_token_int8(smoothed, out, unsigned_weights=recipe["weights"] == "QUInt8")
    finally:
        smoothed.unlink(missing_ok=True)


def per_token_int8(src: Path, dst: Path, *, unsigned_weights: bool = False) -> None:
    """Every MatMul with a constant 2-D weight: its activation quantised per token (scale =
    max|x| / 127 over the last axis, as uint8 around 128), the weight per output column
    (symmetric; int8, or uint8 around 128 where u8 x s8 sums saturate), MatMulInteger, both
    scales applied after. ONNX Runtime has no fused per-row quantiser, so it is plain ONNX."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}

    def constant(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, name))
        return name

    c127, eps = constant("pt_127", np.array(127, np.float32)), constant("pt_eps", np.array(1e-8, np.float32))
    c128, zp = constant("pt_128", np.array(128, np.float32)), constant("pt_zp", np.array(128, np.uint8))
    quantised: dict[str, tuple[str, str]] = {}
    for node in list(graph.node):
        if node.op_type != "MatMul" or node.input[1] not in weights or len(weights[node.input[1]].dims) != 2:
            continue
        x = node.input[0]
        if x not in quantised:
            p = f"pt{len(quantised)}"
            graph.node.extend([
                helper.make_node("Abs", [x], [p + "_abs"]),
                helper.make_node("ReduceMax", [p + "_abs"], [p + "_amax"], axes=[-1], keepdims=1),
                helper.make_node("Max", [p + "_amax", eps], [p + "_amax_eps"]),
                helper.make_node("Div", [p + "_amax_eps", c127], [p + "_scale"]),
                helper.make_node("Div", [x, p + "_scale"], [p + "_scaled"]),
                helper.make_node("Round", [p + "_scaled"], [p + "_rounded"]),
                helper.make_node("Add", [p + "_rounded", c128], [p + "_shifted"]),
                helper.make_node("Cast", [p + "_shifted"], [p + "_q"], to=TensorProto.UINT8)])
            quantised[x] = (p + "_q", p + "_scale")
        xq, scale = quantised[x]
        w = numpy_helper.to_array(weights[node.input[1]]).astype(np.float32)
        w_scale = np.maximum(np.abs(w).max(0), 1e-8) / 127
        wq = np.clip(np.round(w / w_scale), -127, 127)
        n = node.name or node.output[0]
        if unsigned_weights:
            wq_name = constant(n + "_wq", (wq + 128).astype(np.uint8))
            wzp = constant(n + "_wzp", np.full(w.shape[1], 128, np.uint8))
        else:
            wq_name = constant(n + "_wq", wq.astype(np.int8))
            wzp = constant(n + "_wzp", np.zeros(w.shape[1], np.int8))
        ws = constant(n + "_ws", w_scale.astype(np.float32))
        at = list(graph.node).index(node)
        graph.node.remove(node)
        for k, new in enumerate([
                helper.make_node("MatMulInteger", [xq, wq_name, zp, wzp], [n + "_i32"]),
                helper.make_node("Cast", [n + "_i32"], [n + "_f"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [n + "_f", scale], [n + "_fs"]),
                helper.make_node("Mul", [n + "_fs", ws], [node.output[0]])]):
            graph.node.insert(at + k, new)
    _sort_topologically(graph)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save(model, str(dst))


def _measure_split(spec: BackboneSpec, shape: Any, fp32: Path, lower: Path, upper: Path) -> dict[str, float]:
    """The split graphs (no LoRA) vs the fp32 whole graph on the calibration texts, each text
    alone and in batches of 16 (min cosine over both); `row_dependence` is the largest
    difference between a row alone and in a batch (0 for a recipe whose rows are independent)."""
    from models.split import stack_factors
    from models.text import load_tokenizer

    tokenizer = load_tokenizer(spec)
    ref, low, up = _session(fp32), _session(lower), _session(upper)
    names = [i.name for i in up.get_inputs()][2:]
    texts = calibration_texts()

    def run(batch: list[str]) -> np.ndarray:
        ids, mask, _ = tokenizer.encode(batch)
        hidden = low.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        return up.run(None, {"hidden": hidden, "attention_mask": mask,
                             **dict(zip(names, stack_factors(shape, [None] * len(batch))))})[0]

    want = np.concatenate([ref.run(["embeddings"], dict(zip(("input_ids", "attention_mask"),
                                                            tokenizer.encode([t])[:2])))[0] for t in texts])
    alone = np.concatenate([run([t]) for t in texts])
    together = np.concatenate([run(texts[i : i + 16]) for i in range(0, len(texts), 16)])
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    cosine = np.minimum((unit(alone) * unit(want)).sum(1), (unit(together) * unit(want)).sum(1))
    return {**_summary(cosine), "row_dependence": float(np.abs(alone - together).max())}
