"""The int8 recipes and their gate: CPU features, SmoothQuant, the verdict per CPU, refusal."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from models import int8
from models.catalog import resolve_spec
from models.export import artifact_dir, ensure_artifact
from models.runtime import OrtRunner
from models.text import load_tokenizer
from tests.bad_int8 import home_with_bad_int8

AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma bmi2\n"
VNNI = "flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni\n"
ARM = "Features\t: fp asimd asimddp i8mm\n"


def test_cpu_features_and_candidates(monkeypatch):
    avx2 = int8.cpu_features(AVX2)
    vnni = int8.cpu_features(VNNI)
    assert avx2.flags == ("avx2",) and not avx2.exact_u8s8
    assert vnni.exact_u8s8 and "avx512_vnni" in vnni.flags
    assert avx2.key != vnni.key
    assert int8.candidates("text", avx2) == ["smoothquant-u8u8"]
    assert int8.candidates("text", vnni) == ["smoothquant-u8s8", "smoothquant-u8u8"]
    assert int8.candidates("image", avx2) == [] and int8.candidates("image", vnni) == ["qdq-u8s8"]
    monkeypatch.setattr(int8.platform, "machine", lambda: "aarch64")
    arm = int8.cpu_features(ARM)
    assert arm.arm and arm.exact_u8s8 and int8.candidates("image", arm) == ["qdq-u8s8"]


def test_smooth_quant_keeps_the_fp32_function(minilm_spec, graft_home, tmp_path):
    """Smoothing rescales activations and weights in opposite directions: same outputs."""
    fp32 = ensure_artifact(minilm_spec, "fp32", graft_home)
    tok = load_tokenizer(minilm_spec)
    feeds = []
    for text in int8.calibration_texts()[:20]:
        ids, mask, _ = tok.encode([text])
        feeds.append({"input_ids": ids, "attention_mask": mask})
    smoothed = tmp_path / "smoothed.onnx"
    int8.smooth_quant(fp32, smoothed, feeds, alpha=0.7)
    muls = [n for n in onnx.load(str(smoothed), load_external_data=False).graph.node if n.name.endswith("_smooth")]
    assert len(muls) == 6 * 4  # Attention and three MatMuls per layer
    a, b = OrtRunner(fp32, "CPUExecutionProvider", "fp32"), OrtRunner(smoothed, "CPUExecutionProvider", "fp32")
    ids, mask, _ = tok.encode(int8.calibration_texts()[100:116])
    assert np.abs(a.run(ids, mask) - b.run(ids, mask)).max() < 1e-4


def test_calibration_set_is_varied():
    texts = int8.calibration_texts()
    assert "" in texts and "ok" in texts and "thanks!" in texts
    assert any(len(t.split()) > 256 for t in texts) and len(texts) >= 100
    photos = int8.calibration_photos()
    assert photos.shape[1:] == (224, 224, 3) and len(photos) >= 40 and photos.dtype == np.uint8


def test_served_text_int8_meets_the_bar_and_is_kept_per_cpu(minilm_spec, graft_home, tmp_path):
    """u8u8 sums are exact on every x86 and ARM kernel: text serves int8 on any CPU."""
    choice = int8.choose_int8(minilm_spec, graft_home)
    assert choice.precision == "int8" and choice.recipe in int8.candidates("text", int8.cpu_features())
    figures = choice.measured[choice.recipe]
    assert figures["min_cosine"] >= int8.TEXT_BAR["min_cosine"] and figures["items"] >= 100
    # Another processor re-gates instead of reusing this verdict.
    folder = artifact_dir(minilm_spec, graft_home)
    before = set(folder.glob("int8-gate-*.json"))
    other = int8.CpuFeatures("x86_64", ("avx2", "made-up-feature"))
    again = int8.choose_int8(minilm_spec, graft_home, other)
    new = set(folder.glob("int8-gate-*.json")) - before
    try:
        assert len(new) == 1 and other.key in new.pop().name and again.recipe == "smoothquant-u8u8"
    finally:
        for f in set(folder.glob("int8-gate-*.json")) - before:
            f.unlink()


def test_gate_refuses_a_bad_int8_graph_and_serves_fp32(minilm_spec, graft_home, tmp_path):
    home = home_with_bad_int8(minilm_spec, graft_home, tmp_path)
    choice = int8.choose_int8(minilm_spec, home)
    assert choice.precision == "fp32" and choice.recipe is None
    assert choice.path == artifact_dir(minilm_spec, home) / "fp32.onnx"
    assert "no int8 recipe met the bar" in choice.reason and "min_cosine" in choice.reason
    assert all(m["min_cosine"] < int8.TEXT_BAR["min_cosine"] for m in choice.measured.values())


def test_image_gate_measures_top1_agreement_and_applies_the_bar(graft_home):
    """Wherever qdq-u8s8 runs (served or not on this CPU), the gate measures cosine and the
    top-1 agreement of the ImageNet classifier on real photos, and serves it only above the bar."""
    spec = resolve_spec("efficientnet-lite0")
    fp32 = ensure_artifact(spec, "fp32", graft_home)
    path = int8.ensure_int8(spec, "qdq-u8s8", graft_home)
    verdict = int8.gate(spec, fp32, {"qdq-u8s8": path}, int8.cpu_features())
    json.dumps(verdict)
    figures = verdict["measured"]["qdq-u8s8"]
    assert 0 <= figures["top1_agreement"] <= 1 and figures["items"] >= 40
    meets = all(figures[k] >= v for k, v in int8.IMAGE_BAR.items())
    assert (verdict["recipe"] == "qdq-u8s8") == meets, verdict["reason"]
    # The fp32 graph against itself: perfect agreement (the measurement is not noise).
    same = int8.gate(spec, fp32, {"qdq-u8s8": fp32}, int8.cpu_features())["measured"]["qdq-u8s8"]
    assert same["top1_agreement"] == 1.0 and same["min_cosine"] > 0.9999


def test_unknown_recipe_is_refused(minilm_spec, tmp_path):
    with pytest.raises(ValueError, match="smoothquant-u8u8"):
        int8.ensure_int8(minilm_spec, "qdq-u8s8", tmp_path)
