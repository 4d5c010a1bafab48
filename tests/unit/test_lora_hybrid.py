"""The lora-hybrid candidate (adapters/auto.py `hybrid_on_lora`): the hybrid recipe (n-grams
and the vector, one linear model) on the vectors a LoRA adapter's factors give. A version
carries both (method hybrid with lora settings and factors); the split graphs serve it beside
LoRA and head-only rows of other tenants in one pass, each row as it is alone; auto trains it
right after lora, from lora's factors, and skips it, saying why, when lora did not train."""
from __future__ import annotations

import numpy as np
import pytest

from adapters import auto
from adapters.format import AdapterConfig, AdapterFormatError, decode, encode
from adapters.pipeline import train_version
from models import load_backbone
from service.inference import Work, backbone_pass
from tests.integration.data import xor_split
from tests.unit.test_deep import NoCache
from tests.unit.test_pipeline import Events

TRAIN, HELD_OUT = xor_split()  # the label is topic x sentiment: no linear model of words or frozen vectors learns it


@pytest.fixture(scope="module")
def split_backbone(graft_home):
    return load_backbone("minilm-l6", graft_home, precision="fp32", split_layers=2)


def seal(backbone, config: AdapterConfig, tensors: dict[str, np.ndarray]):
    sealed, weights = encode(AdapterConfig(**{**config.__dict__, "backbone": backbone.id,
                                              "fingerprint": backbone.fingerprint}), tensors)
    return sealed, weights


@pytest.fixture(scope="module")
def adapters(split_backbone):
    """A LoRA version trained by the pipeline, and the lora-hybrid built on its factors."""
    out = train_version(TRAIN, split_backbone, {"method": "lora", "epochs": 8}, active=None, cache=NoCache(),
                        report=Events(), promote_margin=0.01)
    lora = decode(out.config.to_json(), out.weights, fingerprint=split_backbone.fingerprint, dim=split_backbone.dim,
                  split=4)
    labels = lora.labels
    y = np.array([labels.index(e["label"]) for e in TRAIN])
    probe = auto.hybrid_on_lora(split_backbone, lora.config.lora, lora.tensors, [e["text"] for e in TRAIN], y, labels)
    sealed, weights = seal(split_backbone, probe.config, probe.tensors)
    hybrid = decode(sealed.to_json(), weights, fingerprint=split_backbone.fingerprint, dim=split_backbone.dim, split=4)
    return lora, hybrid, sealed, weights


def accuracy(backbone, adapter, rows: list[tuple[str, str]]) -> float:
    texts = [t for t, _ in rows]
    scores = [r.scores for r in backbone_pass(backbone, [Work(t, adapter, t) for t in texts])]
    return float(np.mean([adapter.labels[int(s.argmax())] == label for s, (_, label) in zip(scores, rows)]))


def test_a_lora_hybrid_version_carries_the_factors_and_the_hybrid_head(split_backbone, adapters):
    lora, hybrid, sealed, weights = adapters
    assert sealed.method == "hybrid" and sealed.lora == lora.config.lora and sealed.lexical["word_terms"] > 0
    assert hybrid.needs_text and hybrid.needs_vector and hybrid.lexical.hybrid
    assert set(hybrid.deep.factors) == set(lora.deep.factors)
    for key, (a, b) in lora.deep.factors.items():
        assert np.array_equal(hybrid.deep.factors[key][0], a) and np.array_equal(hybrid.deep.factors[key][1], b)
    with pytest.raises(AdapterFormatError, match="split backbone"):
        decode(sealed.to_json(), weights, fingerprint=split_backbone.fingerprint, dim=split_backbone.dim)
    with pytest.raises(AdapterFormatError, match="split at layer 3"):
        decode(sealed.to_json(), weights, fingerprint=split_backbone.fingerprint, dim=split_backbone.dim, split=3)


def test_malformed_lora_hybrids_are_refused(split_backbone, adapters):
    _, hybrid, sealed, _ = adapters
    tensors = dict(hybrid.tensors)
    lexical = {k: v for k, v in tensors.items() if not k.startswith("lora_")}
    with pytest.raises(AdapterFormatError, match="without lora settings carries no LoRA factors"):
        seal(split_backbone, AdapterConfig(**{**sealed.__dict__, "lora": None}), tensors)
    with pytest.raises(AdapterFormatError, match="lora settings and factors"):
        seal(split_backbone, sealed, lexical)  # settings, no factors
    with pytest.raises(AdapterFormatError, match="no unfreeze settings or lora settings"):
        seal(split_backbone, AdapterConfig(**{**sealed.__dict__, "method": "lexical"}), tensors)
    with pytest.raises(AdapterFormatError, match=r"must be A \(d_in, 3\)"):
        seal(split_backbone, AdapterConfig(**{**sealed.__dict__, "lora": {**sealed.lora, "rank": 3}}), tensors)


def test_it_serves_beside_lora_and_plain_rows_each_as_alone(split_backbone, adapters):
    """One pass over rows of the lora-hybrid, the LoRA it was built on and plain embeddings
    (three tenants' requests sharing a batch): every row's scores equal its adapter applied
    alone through the split graphs; and on the held-out texts it learns what LoRA learned."""
    lora, hybrid, _, _ = adapters
    texts = [t for t, _ in HELD_OUT][:24]
    order = [(hybrid, lora, None)[i % 3] for i in range(len(texts))]
    rows = backbone_pass(split_backbone, [Work(t, a, t if a is hybrid else None) for t, a in zip(texts, order)],
                         max_loras=4)
    for i, (t, a) in enumerate(zip(texts, order)):
        if a is None:
            assert rows[i].scores is None
            continue
        alone = a.predict_proba(split_backbone.embed_deep([t], [a.deep]).vectors, [t] if a.needs_text else None)[0]
        assert np.allclose(rows[i].scores, alone, atol=1e-5), t
    held_lora, held_hybrid = accuracy(split_backbone, lora, HELD_OUT), accuracy(split_backbone, hybrid, HELD_OUT)
    assert held_lora >= 0.85 and held_hybrid >= 0.85, (held_lora, held_hybrid)


def test_auto_tries_it_after_lora_from_lora_s_factors(split_backbone, monkeypatch):
    monkeypatch.setattr(auto, "LORA_MIN_EXAMPLES", 100)  # the XOR set: 160 examples
    monkeypatch.setattr(auto, "MLP_MIN_EXAMPLES", 10_000)
    report = Events()
    out = train_version(TRAIN, split_backbone, {"epochs": 8}, active=None, cache=NoCache(), report=report,
                        promote_margin=0.01)
    tried = [d for k, d in report.events if k == "candidate"]
    names = [d["candidate"] for d in tried]
    assert names[-2:] == ["lora", "lora-hybrid"], names
    lora, hybrid = tried[-2:]
    assert hybrid["seconds"] < lora["seconds"] and hybrid["method"] == "hybrid"
    assert max(lora["validation_macro_f1"], hybrid["validation_macro_f1"]) >= 0.85, tried
    if out.config.training["chosen"] == "lora-hybrid":
        assert out.config.method == "hybrid" and out.config.lora["split"] == 4
    adapter = decode(out.config.to_json(), out.weights, fingerprint=split_backbone.fingerprint,
                     dim=split_backbone.dim, split=4)
    assert accuracy(split_backbone, adapter, HELD_OUT) >= 0.85


def test_without_lora_it_is_skipped_and_says_why(split_backbone, monkeypatch):
    monkeypatch.setattr(auto, "plan", lambda *a: ["head", "lora-hybrid"])
    report = Events()
    out = train_version(TRAIN, split_backbone, {"epochs": 2}, active=None, cache=NoCache(), report=report,
                        promote_margin=0.01)
    (skipped,) = [d for k, d in report.events if k == "candidate_skipped"]
    assert skipped["candidate"] == "lora-hybrid" and "lora did not train" in skipped["reason"]
    assert out.config.training["chosen"] == "head"
