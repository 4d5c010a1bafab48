"""The parity gate: every exported text graph is compared with the torch model before it serves.

`prepare` (and a server's start, which prepares what is missing) runs each graph a backbone
serves in fp32 (the whole graph; the split graphs of deep adapters: lower + upper with no
LoRA, and lower + upper_weights with the pretrained weights) against the torch model on a
fixed set: the shipped calibration texts (models/calibration: real sentences, one-word and
empty ones, long ones that are truncated), in batches of 8 padded together as served. The
figure is the largest absolute difference between the unit vectors; a graph above the bar
is refused with a message that says which graph and by how much. Image graphs of a Hugging
Face directory (models/hf_image.py) are gated the same way on the shipped calibration photos
(four views of each, resized to the graph's input side), and CLIP's text tower on the
calibration texts. Reduced precision is gated by cosine instead: the fp16 graph (CUDA's
default) against the torch model on the same set, per row (`check_reduced`, measured on the CPU
where `prepare` runs: ONNX Runtime runs fp16 graphs there too), and int8 graphs by their own
gate against this fp32 graph (models/int8.py: cosine). Verdicts are kept beside the artifacts
(once per artifact, gate version and graph), a miss too, so a restart does not re-measure.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from models.catalog import BackboneSpec
from models.export import artifact_dir, atomic_write, locked, require

log = logging.getLogger(__name__)

# On unit vectors. fp32 graphs (fused or not) differ from torch by float rounding:
# ~1e-6 on MiniLM and the tiny test models; a wrong export (positions, padding, pooling)
# differs by 1e-2 and more.
FP32_BAR = {"max_abs_diff": 1e-4}
# fp16 rounds every weight and activation: MiniLM's fp16 graph is ~0.99999 from torch per row;
# a graph that lost its pooling or overflowed in fp16 falls far below.
FP16_BAR = {"min_cosine": 0.999}
BATCH = 8


class ParityError(RuntimeError):
    """An exported graph does not compute what the torch model does."""


def _version() -> str:
    from models.int8 import CALIBRATION_DIR

    h = hashlib.sha256(json.dumps([FP32_BAR, BATCH, 1]).encode())
    h.update((CALIBRATION_DIR / "texts.json").read_bytes())
    return h.hexdigest()[:8]


def parity_texts() -> list[str]:
    from models.int8 import calibration_texts

    return calibration_texts()


def check(spec: BackboneSpec, home: Path, graph: str, run: Callable[..., np.ndarray],
          *, tag: str, measure_with: Callable[..., dict[str, Any]] | None = None,
          bar: dict[str, float] | None = None) -> dict[str, Any]:
    """Gate one graph (`run(ids, mask)` -> vectors; an image graph: `run(pixels)`, measured by
    `measure_with`) against the torch model; the verdict is cached under `tag` (a name for
    the graph file). Raises ParityError on a miss."""
    folder = artifact_dir(spec, home)
    verdict_file = folder / f"parity-{tag}-{_version()}.json"
    if not verdict_file.is_file():
        # Prepared artifacts carry their verdicts: a serving process has no torch to measure with.
        require(spec, home, (verdict_file,), f"the parity verdict of its {graph} graph")
        folder.mkdir(parents=True, exist_ok=True)
        with locked(folder / ".lock"):
            if not verdict_file.is_file():
                verdict = (measure_with or measure)(spec, graph, run, bar or FP32_BAR)
                with atomic_write(verdict_file) as tmp:
                    tmp.write_text(json.dumps(verdict, indent=2))
    verdict = json.loads(verdict_file.read_text())
    if not verdict["passed"]:
        raise ParityError(verdict["reason"])
    log.info("%s parity gate: %s", spec.id, verdict["reason"])
    return verdict


def measure(spec: BackboneSpec, graph: str, run: Callable[[np.ndarray, np.ndarray], np.ndarray],
            bar: dict[str, float] = FP32_BAR) -> dict[str, Any]:
    from models.export import load_torch_encoder

    started = time.perf_counter()
    return _compare_texts(spec, graph, run, load_torch_encoder(spec), parity_texts(), started, bar)


def _compare_texts(spec: BackboneSpec, graph: str, run: Callable[[np.ndarray, np.ndarray], np.ndarray], model: Any,
                   texts: list[str], started: float, bar: dict[str, float] = FP32_BAR) -> dict[str, Any]:
    """`run` against the torch `model` ((ids, mask) -> vectors) on `texts`, BATCH a call, padded together."""
    import torch

    from models.text import load_tokenizer

    tokenizer = load_tokenizer(spec)
    batches = []
    for start in range(0, len(texts), BATCH):
        ids, mask, _ = tokenizer.encode(texts[start : start + BATCH])
        with torch.no_grad():
            want = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        batches.append((np.asarray(run(ids, mask), dtype=np.float32), want))
    return _verdict(spec, graph, batches, f"{len(texts)} texts", started, bar)


def _verdict(spec: BackboneSpec, graph: str, batches: list[tuple[np.ndarray, np.ndarray]], what: str,
             started: float, bar: dict[str, float] = FP32_BAR) -> dict[str, Any]:
    """The figures and the verdict against `bar`: FP32_BAR (max abs diff) or FP16_BAR (min cosine)."""
    worst, cosine = 0.0, 1.0
    for got, want in batches:
        worst = max(worst, float(np.abs(got - want).max()))
        cosine = min(cosine, float(((got * want).sum(1) / np.linalg.norm(got, axis=1)
                                    / np.linalg.norm(want, axis=1)).min()))
    if "min_cosine" in bar:
        passed = cosine >= bar["min_cosine"]
        figure = (f"min cosine {cosine:.6f} " + (f">= {bar['min_cosine']}" if passed else
                  f"< {bar['min_cosine']} (max abs diff {worst:.2e}): refused; this precision loses what the "
                  f"{spec.family} model computes (serve fp32: GRAFT_PRECISION=fp32)"))
    else:
        passed = worst <= bar["max_abs_diff"]
        figure = (f"max abs diff {worst:.2e} " + (f"<= {bar['max_abs_diff']:.0e}" if passed else
                  f"> {bar['max_abs_diff']:.0e} (min cosine {cosine:.6f}): refused; the export does not compute "
                  f"what the {spec.family} model does (report it with the model's config.json)"))
    reason = f"{graph} graph vs torch on {what}: {figure}"
    if not passed:
        reason = f"backbone {spec.id!r}: {reason}"
    return {"graph": graph, "passed": passed, "max_abs_diff": worst, "min_cosine": cosine, "bar": bar,
            "texts": sum(len(got) for got, _ in batches), "seconds": round(time.perf_counter() - started, 2),
            "reason": reason}


def measure_image(spec: BackboneSpec, graph: str, run: Callable[[np.ndarray], np.ndarray],
                  bar: dict[str, float] = FP32_BAR) -> dict[str, Any]:
    """An image graph (`run(pixels)` -> vectors) against the torch model on the calibration
    photos (models/calibration/photos: four views of each, at the graph's input side)."""
    import torch

    from models.hf_image import load_torch_image_encoder
    from models.int8 import calibration_photos

    started = time.perf_counter()
    model = load_torch_image_encoder(spec)
    pixels = calibration_photos(spec.image_size)
    batches = []
    for start in range(0, len(pixels), BATCH):
        chunk = pixels[start : start + BATCH]
        with torch.no_grad():
            batches.append((np.asarray(run(chunk), dtype=np.float32), model(torch.from_numpy(chunk)).numpy()))
    verdict = _verdict(spec, graph, batches, f"{len(pixels)} photo views", started, bar)
    verdict["images"] = verdict.pop("texts")
    return verdict


def measure_text_tower(spec: BackboneSpec, graph: str, run: Callable[[np.ndarray, np.ndarray], np.ndarray],
                       bar: dict[str, float] = FP32_BAR) -> dict[str, Any]:
    """CLIP's text tower graph against torch CLIPModel's projected text embeddings on the
    calibration texts, each also put in the backbone's zero-shot prompt."""
    from models.hf_image import load_torch_clip_text

    started = time.perf_counter()
    texts = parity_texts()
    texts = texts + [spec.label_prompt.replace("{label}", t) for t in texts[:32]]
    return _compare_texts(spec, graph, run, load_torch_clip_text(spec), texts, started, bar)


def check_image(spec: BackboneSpec, home: Path, fp32: Path) -> dict[str, Any]:
    """The whole fp32 image graph of a Hugging Face image directory."""
    session = _session(fp32)
    return check(spec, home, "fp32", lambda pixels: session.run(["embeddings"], {"pixels": pixels})[0],
                 tag=fp32.stem, measure_with=measure_image)


def check_text_tower(spec: BackboneSpec, home: Path, graph: Path) -> dict[str, Any]:
    """A CLIP backbone's text tower graph."""
    session = _session(graph)
    return check(spec, home, "text tower", lambda ids, mask: session.run(
        ["embeddings"], {"input_ids": ids, "attention_mask": mask})[0], tag=graph.stem,
        measure_with=measure_text_tower)


class _session:
    """An ORT session of `path`, opened at its first call: a verdict already kept (a restart,
    prepared artifacts) opens none."""

    def __init__(self, path: Path) -> None:
        self.path, self._session = path, None

    def _open(self):  # -> ort.InferenceSession
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        return self._session

    def run(self, *args: Any) -> Any:
        return self._open().run(*args)

    def get_inputs(self) -> Any:
        return self._open().get_inputs()


def check_whole(spec: BackboneSpec, home: Path, fp32: Path) -> dict[str, Any]:
    """The whole fp32 graph (what head adapters and embeddings are served from)."""
    session = _session(fp32)
    return check(spec, home, "fp32", lambda ids, mask: session.run(
        ["embeddings"], {"input_ids": ids, "attention_mask": mask})[0], tag=fp32.stem)


def check_reduced(spec: BackboneSpec, home: Path, graph: Path, precision: str = "fp16") -> dict[str, Any]:
    """The whole graph at reduced precision (fp16) against torch, by cosine per row (FP16_BAR);
    text, or an image directory's graph on the calibration photos."""
    session = _session(graph)
    if spec.kind == "text":
        return check(spec, home, precision, lambda ids, mask: session.run(
            ["embeddings"], {"input_ids": ids, "attention_mask": mask})[0], tag=f"{graph.stem}-cosine", bar=FP16_BAR)
    return check(spec, home, precision, lambda pixels: session.run(["embeddings"], {"pixels": pixels})[0],
                 tag=f"{graph.stem}-cosine", measure_with=measure_image, bar=FP16_BAR)


def check_split(spec: BackboneSpec, home: Path, shape: Any, lower: Path, upper: Path,
                upper_weights: Path, pretrained: Path) -> dict[str, Any]:
    """The fp32 split graphs of deep adapters: lower + upper without LoRA, and lower +
    upper_weights fed the pretrained weights, each against the torch model."""
    from safetensors.numpy import load_file

    from models.split import stack_factors

    low, up, upw = _session(lower), _session(upper), _session(upper_weights)
    names = shape.weight_inputs()
    weights: dict[str, np.ndarray] = {}  # read at the first measurement only

    def run_upper(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        hidden = low.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        lora = dict(zip([i.name for i in up.get_inputs()][2:], stack_factors(shape, [None] * len(ids))))
        return up.run(None, {"hidden": hidden, "attention_mask": mask, **lora})[0]

    def run_weights(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        hidden = low.run(None, {"input_ids": ids, "attention_mask": mask})[0]
        weights.update(weights or load_file(str(pretrained)))
        return upw.run(None, {"hidden": hidden, "attention_mask": mask, **{n: weights[n] for n in names}})[0]

    return {"split": check(spec, home, "split (lower + upper)", run_upper, tag=upper.stem),
            "upper_weights": check(spec, home, "split (lower + upper_weights)", run_weights, tag=upper_weights.stem)}


def summary(verdicts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What /readyz shows per graph: passed, the figure, the bar (max abs diff; reduced
    precision: min cosine)."""
    out: dict[str, Any] = {}
    for name, v in verdicts.items():
        figure, digits = ("min_cosine", 6) if "min_cosine" in v["bar"] else ("max_abs_diff", 3)
        out[name] = {"passed": v["passed"], figure: float(f"{v[figure]:.{digits}g}"), "bar": v["bar"][figure]}
    return out
