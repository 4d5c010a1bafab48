"""CUDA provider: parity with torch and throughput against the CPU int8 path.

Runs with `make test-gpu` on a machine with onnxruntime-gpu and an NVIDIA GPU; skipped
elsewhere (CI has no GPU). Figures are printed for docs/BENCHMARKS.md.
"""
from __future__ import annotations

import time

import pytest
import torch

from models import load_backbone
from models.export import load_torch_encoder
from models.text import load_tokenizer
from tests.conftest import SENTENCES

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def reference(minilm_spec):
    model = load_torch_encoder(minilm_spec)
    ids, mask, _ = load_tokenizer(minilm_spec).encode(SENTENCES)
    with torch.no_grad():
        return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()


@pytest.mark.parametrize("precision,min_cosine", [("fp32", 0.9999), ("fp16", 0.995)])
def test_cuda_parity(graft_home, reference, precision, min_cosine):
    backbone = load_backbone("minilm-l6", graft_home, precision=precision, provider="cuda")
    assert backbone.provider == "CUDAExecutionProvider"
    out = backbone.embed(SENTENCES).vectors
    cosine = (out * reference).sum(1)
    assert cosine.min() >= min_cosine, cosine


def _rate(embed, texts, batch, seconds=5.0):
    for _ in range(3):
        embed(texts[:batch])
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        embed(texts[:batch])
        n += batch
    return n / (time.perf_counter() - start)


def test_cuda_throughput(graft_home):
    texts = (SENTENCES * 16)[:256]
    gpu = load_backbone("minilm-l6", graft_home, precision="fp16", provider="cuda")
    cpu = load_backbone("minilm-l6", graft_home, precision="int8", provider="cpu")
    rows = {f"cuda fp16 batch {b}": _rate(gpu.embed, texts, b) for b in (1, 32, 256)}
    rows["cpu int8 batch 32"] = _rate(cpu.embed, texts, 32)
    for name, rate in rows.items():
        print(f"{name}: {rate:.1f} sentences/s")
    assert rows["cuda fp16 batch 32"] > rows["cpu int8 batch 32"]


@pytest.mark.parametrize("precision,min_cosine", [("fp32", 0.9999), ("fp16", 0.995)])
def test_cuda_image_parity(graft_home, precision, min_cosine):
    import numpy as np

    from models.catalog import resolve_spec
    from models.image import load_torch_image_encoder
    from tests.images import png

    images = [png(i) for i in range(12)]
    backbone = load_backbone("efficientnet-lite0", graft_home, precision=precision, provider="cuda")
    assert backbone.provider == "CUDAExecutionProvider"
    pixels = np.stack([backbone.prepare(b) for b in images])
    with torch.no_grad():
        ref = load_torch_image_encoder(resolve_spec("efficientnet-lite0"))(torch.from_numpy(pixels)).numpy()
    cosine = (backbone.embed(images).vectors * ref).sum(1)
    assert cosine.min() >= min_cosine, cosine
