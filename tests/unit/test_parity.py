"""ONNX vs torch: fp32 within 1e-4 (max abs), int8 cosine >= 0.98 for every sentence (the int8
graph the gate serves on this CPU; models/int8.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models.export import ensure_artifact, load_torch_encoder
from models.int8 import choose_int8
from models.runtime import OrtRunner
from models.text import load_tokenizer
from tests.conftest import SENTENCES

BATCHES = [1, 3, 8, 16]


@pytest.fixture(scope="module")
def reference(minilm_spec):
    model = load_torch_encoder(minilm_spec)
    tok = load_tokenizer(minilm_spec)

    def embed(texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ids, mask, _ = tok.encode(texts)
        with torch.no_grad():
            ref = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        return ids, mask, ref

    return embed


def _batches(size: int) -> list[list[str]]:
    return [SENTENCES[i : i + size] for i in range(0, len(SENTENCES), size)]


@pytest.mark.parametrize("artifact", ["raw", "fp32"])
@pytest.mark.parametrize("size", BATCHES)
def test_fp32_matches_torch(reference, minilm_spec, graft_home, artifact, size):
    path = ensure_artifact(minilm_spec, "fp32", graft_home)
    runner = OrtRunner(path.with_name(f"{artifact}.onnx"), "CPUExecutionProvider", "fp32")
    for batch in _batches(size):
        ids, mask, ref = reference(batch)
        out = runner.run(ids, mask)
        assert out.shape == ref.shape == (len(batch), 384)
        assert np.abs(out - ref).max() < 1e-4


@pytest.mark.parametrize("size", BATCHES)
def test_int8_cosine_per_sentence(reference, minilm_spec, graft_home, size):
    served = choose_int8(minilm_spec, graft_home)
    assert served.precision == "int8", served.reason  # u8u8 is exact on every CPU: text keeps int8
    runner = OrtRunner(served.path, "CPUExecutionProvider", "int8")
    for batch in _batches(size):
        ids, mask, ref = reference(batch)
        out = runner.run(ids, mask)
        cosine = (out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)
        worst = int(cosine.argmin())
        assert cosine.min() >= 0.98, f"cosine {cosine.min():.4f} for {batch[worst][:60]!r}"


def test_outputs_are_unit_vectors(minilm_spec, graft_home):
    runner = OrtRunner(choose_int8(minilm_spec, graft_home).path, "CPUExecutionProvider", "int8")
    ids, mask, _ = load_tokenizer(minilm_spec).encode(SENTENCES)
    norms = np.linalg.norm(runner.run(ids, mask), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-5)


def test_fp16_artifact_has_half_weights_and_float_io(reference, minilm_spec, graft_home):
    """The GPU default is built and checked here too (CPU ORT runs it, slowly)."""
    import onnx

    path = ensure_artifact(minilm_spec, "fp16", graft_home)
    model = onnx.load(str(path))
    assert {i.data_type for i in model.graph.initializer if i.dims and len(i.dims) == 2} == {onnx.TensorProto.FLOAT16}
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    runner = OrtRunner(path, "CPUExecutionProvider", "fp16")
    ids, mask, ref = reference(SENTENCES)
    cosine = (runner.run(ids, mask) * ref).sum(1)
    assert cosine.min() >= 0.995


def test_fp16_has_a_parity_gate_by_cosine(minilm_spec, graft_home, tmp_path):
    """Reduced precision is gated by cosine (models/parity.py FP16_BAR): MiniLM's fp16 graph
    passes, /readyz shows the figure and the bar; a graph that is not the model (max pooling
    gated against a mean-pooling export) is refused with what to do, and the miss is kept."""
    import dataclasses

    from models import load_backbone, parity

    backbone = load_backbone("minilm-l6", graft_home, provider="cpu", precision="fp16")
    gate = backbone.describe()["parity_gate"]
    assert gate["fp16"]["passed"] and gate["fp16"]["min_cosine"] >= parity.FP16_BAR["min_cosine"] == gate["fp16"]["bar"]
    assert gate["fp32"]["passed"] and "max_abs_diff" in gate["fp32"]

    fp16 = ensure_artifact(minilm_spec, "fp16", graft_home)
    runner = OrtRunner(fp16, "CPUExecutionProvider", "fp16")
    wrong = dataclasses.replace(minilm_spec, pooling="max")
    verdict = parity.measure(wrong, "fp16", runner.run, parity.FP16_BAR)
    assert not verdict["passed"] and verdict["min_cosine"] < 0.999
    with pytest.raises(parity.ParityError, match=r"backbone 'minilm-l6': fp16 graph vs torch on \d+ texts: min cosine "
                                                 r".* < 0.999 .*refused.*GRAFT_PRECISION=fp32"):
        parity.check(wrong, tmp_path, "fp16", runner.run, tag="wrong-cosine", bar=parity.FP16_BAR)
    with pytest.raises(parity.ParityError):  # kept: not measured again
        parity.check(wrong, tmp_path, "fp16", lambda ids, mask: pytest.fail("re-measured"), tag="wrong-cosine",
                     bar=parity.FP16_BAR)
