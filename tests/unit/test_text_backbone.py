"""TextBackbone: order, truncation flags, length-sorted sub-batches that change nothing."""
from __future__ import annotations

import numpy as np
import pytest

from models import load_backbone
from models.text import _split_by_padding
from tests.conftest import SENTENCES


@pytest.fixture(scope="module")
def backbone(graft_home):
    return load_backbone("minilm-l6", graft_home, precision="fp32", provider="cpu")


def test_describe(backbone):
    d = backbone.describe()
    assert d["dim"] == 384 and d["precision"] == "fp32" and d["provider"] == "CPUExecutionProvider"
    assert d["kind"] == "text" and len(d["fingerprint"]) == 32


# Character count and token count disagree here (many one-letter words are many tokens;
# a long word is a few), so sorting by characters would cut rows short.
UNEVEN = [
    "a b c d e f g h i j k l m n o p q r s t u v w x y z a b c d e f g h",
    "Antidisestablishmentarianism.",
    "😀 😀 😀 😀 😀 😀 😀 😀",
    "Pneumonoultramicroscopicsilicovolcanoconiosis is long",
    "x y z x y z x y z x y z x y z x y z",
    "Supercalifragilisticexpialidocious",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16",
    "ok",
]


def test_batch_equals_one_by_one_in_input_order(backbone):
    texts = SENTENCES + UNEVEN
    together = backbone.embed(texts).vectors
    alone = np.concatenate([backbone.embed([s]).vectors for s in texts])
    assert np.abs(together - alone).max() < 1e-4


def test_empty_batch(backbone):
    result = backbone.embed([])
    assert result.vectors.shape == (0, 384) and result.truncated == []


def test_truncation_is_flagged_per_item(backbone):
    long_text = "token " * 300
    result = backbone.embed(["short", long_text, "x" * 10])
    assert result.truncated == [False, True, False]


def test_prepare_names_the_problem(backbone):
    from models.base import ItemError

    assert backbone.prepare("text") == "text"
    with pytest.raises(ItemError, match="embeds text: send a string, not an image"):
        backbone.prepare(b"\x89PNG")
    with pytest.raises(ItemError, match="not dict"):
        backbone.prepare({"image": "..."})


@pytest.mark.parametrize(
    "lengths,expected",
    [
        ([5] * 20, [20]),
        ([3] * 10 + [200] * 10, [10, 20]),  # far apart: two ORT passes
        ([3] * 4 + [200], [5]),  # too few short rows to be worth a pass of their own
        ([1], [1]),
    ],
)
def test_split_by_padding(lengths, expected):
    assert _split_by_padding(np.array(lengths)) == expected


def test_split_caps_rows():
    assert _split_by_padding(np.array([5] * 20), max_rows=8) == [8, 16, 20]


def test_int8_embedding_does_not_depend_on_batch_company(graft_home):
    """Dynamic int8 scales per tensor; rows must not share a call or they change each other."""
    int8 = load_backbone("minilm-l6", graft_home, precision="int8", provider="cpu")
    alone = int8.embed([SENTENCES[1]]).vectors[0]
    for company in (SENTENCES[:8], SENTENCES[8:], ["word " * 300, SENTENCES[1], "?"]):
        batch = [*company, SENTENCES[1]]
        assert np.array_equal(int8.embed(batch).vectors[-1], alone)


def test_prepared_tokens_embed_as_the_texts_do(backbone):
    """#17.3: texts are tokenised off the compute lane (prepare_many); the lane only pads.
    Token ids, raw strings and a mix of both give the same vectors, flags and order."""
    from models.base import ItemError
    from models.text import Tokens

    texts = SENTENCES + UNEVEN
    tokens = backbone.prepare_many(texts)
    assert all(isinstance(t, Tokens) for t in tokens)
    assert [backbone.cost(t) for t in tokens] == [len(t.ids) for t in tokens]
    assert max(backbone.cost(t) for t in tokens) == backbone.max_tokens  # the long sentence, cut
    from_texts, from_tokens = backbone.embed(texts), backbone.embed(tokens)
    mixed = backbone.embed([t if i % 2 else texts[i] for i, t in enumerate(tokens)])
    assert np.abs(from_texts.vectors - from_tokens.vectors).max() < 1e-5
    assert np.abs(from_texts.vectors - mixed.vectors).max() < 1e-5
    assert from_texts.truncated == from_tokens.truncated == mixed.truncated
    with pytest.raises(ItemError) as bad:
        backbone.prepare_many(["fine", "also fine", b"\x89PNG"])
    assert bad.value.index == 2


def test_lanes_run_a_pass_side_by_side_and_change_nothing(graft_home):
    """int8 runs row by row; with lanes the rows of one pass run in single-threaded sessions
    side by side, each row's vector exactly what the multi-threaded session gives it alone."""
    from models.runtime import Lanes

    laned = load_backbone("minilm-l6", graft_home, provider="cpu", lanes=2)
    plain = load_backbone("minilm-l6", graft_home, provider="cpu", lanes=1)
    assert laned.max_rows == 1 and isinstance(laned.lanes, Lanes) and len(laned.lanes) == 2
    assert plain.lanes is None
    texts = SENTENCES + UNEVEN
    calls: list[int] = []
    for runner in laned.lanes.runners:
        real = runner.run
        runner.run = lambda *a, real=real: calls.append(1) or real(*a)
    together = laned.embed(texts).vectors
    assert len(calls) == len(texts)  # every row through a lane, none through the shared session
    alone = np.concatenate([plain.embed([s]).vectors for s in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    calls.clear()
    laned.embed(["one text alone"])  # one call: the multi-threaded session, not a lane
    assert calls == []


@pytest.mark.parametrize("provider,threads,cores,want", [
    ("CPUExecutionProvider", 0, 2, 2), ("CPUExecutionProvider", 0, 16, 4), ("CPUExecutionProvider", 1, 8, 0),
    ("CPUExecutionProvider", 3, 8, 3), ("CPUExecutionProvider", 0, 1, 0), ("CUDAExecutionProvider", 0, 8, 0),
])
def test_default_lanes(monkeypatch, provider, threads, cores, want):
    import os

    from models.runtime import default_lanes

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)))
    assert default_lanes(provider, threads) == want
