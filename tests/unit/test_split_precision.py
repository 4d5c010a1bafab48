"""The split graphs deep-adapter rows share, at the precision their int8 gate allows on this
CPU: no row's vector depends on its batch-mates, and they stay within the text bar of fp32."""
from __future__ import annotations

import numpy as np
import pytest

from models import load_backbone
from models.int8 import TEXT_BAR
from tests.conftest import SENTENCES
from tests.unit.test_deep import random_factors

ONE_WORD = ["ok", "refund", "why?", "great", "", "no"]


@pytest.fixture(scope="module")
def served(graft_home):
    """The split backbone as the service loads it (precision auto: int8 where the gate allows)."""
    return load_backbone("minilm-l6", graft_home, split_layers=2)


@pytest.fixture(scope="module")
def reference(graft_home):
    return load_backbone("minilm-l6", graft_home, precision="fp32")


def test_the_lower_graph_says_its_precision_and_why(served):
    deep = served.describe()["deep_adapters"]
    assert deep["precision"] in ("int8", "fp32")
    assert deep["gate"].startswith(f"split graphs {deep['precision']}")


def test_rows_do_not_depend_on_their_batch_mates(served):
    """LoRA and plain rows of different lengths in one call, against each row alone."""
    texts = SENTENCES + ONE_WORD
    shape = served.split_shape
    factors = [random_factors(shape, 8, seed=i % 3) if i % 2 else None for i in range(len(texts))]
    together = served.embed_deep(texts, factors).vectors
    alone = np.concatenate([served.embed_deep([t], [f]).vectors for t, f in zip(texts, factors)])
    assert np.abs(together - alone).max() <= 1e-5
    assert (together * alone).sum(1).min() >= 0.9999


def test_the_served_lower_graph_meets_the_text_bar(served, reference):
    texts = SENTENCES + ONE_WORD
    got = served.embed_deep(texts, [None] * len(texts)).vectors
    want = reference.embed(texts).vectors
    assert (got * want).sum(1).min() >= TEXT_BAR["min_cosine"]


def test_deep_adapters_train_on_fp32_hidden_states(served, graft_home):
    """Whatever precision serves, the states training reads come from the fp32 lower graph
    (LoRA trained on int8 states never beat its probe on reviews: docs/BENCHMARKS.md)."""
    fp32 = load_backbone("minilm-l6", graft_home, precision="fp32", split_layers=2)
    for got, want in zip(served.hidden_states(SENTENCES), fp32.hidden_states(SENTENCES)):
        assert np.array_equal(got, want)
    assert served.hidden_key == fp32.hidden_key


def test_a_cpu_without_vnni_gates_the_u8u8_split_recipe(graft_home):
    """u8 x s8 sums saturate on AVX2 without VNNI: such a CPU gets per-token-u8u8, which must
    meet the same bar (measured here on this machine's kernels; the u8 x u8 path is exact on
    every x86 kernel)."""
    from models.catalog import resolve_spec
    from models.int8 import CpuFeatures, choose_split
    from models.split import split_shape

    spec = resolve_spec("minilm-l6")
    avx2 = CpuFeatures("x86_64", ("avx2",))
    choice = choose_split(spec, split_shape(spec, 2), graft_home, cpu=avx2)
    assert list(choice.measured)[0] == "per-token-u8u8"
    assert choice.recipe == "per-token-u8u8" and choice.precision == "int8", choice.reason
    figures = choice.measured["per-token-u8u8"]
    assert figures["min_cosine"] >= TEXT_BAR["min_cosine"] and figures["row_dependence"] <= 1e-5
