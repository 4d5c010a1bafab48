"""Lexical and hybrid adapters on their own: the format round trip rebuilds the vectoriser
exactly (served probabilities equal the trained model's), the size bound holds on a large
random vocabulary, malformed versions are refused, the pipeline trains them (and a lexical
adapter beats a head where word identity decides the label), and the head stage serves them
beside head rows of another tenant."""
from __future__ import annotations

import random
import string

import numpy as np
import pytest

from adapters import lexical as lex
from adapters.evaluation import stratified_split
from adapters.format import AdapterConfig, AdapterFormatError, decode, encode
from adapters.lexical import LexicalModel, LexicalParams, fit_vocabulary, train_lexical
from adapters.pipeline import InvalidParams, train_version
from models import load_backbone
from service.inference import Work, backbone_pass
from tests.integration.data import split
from tests.integration.lexical_data import LABELS, code_split
from tests.unit.test_pipeline import DictCache, Events

FP = "f" * 32
DIM = 8
TEXTS = ["the cat sat on the mat", "a dog barked at the mailman", "cats purr, dogs bark!", "the mat was red",
         "Ünïcödé café naïve — 中文", "dog and cat friends", "red dogs, blue cats", "a quiet mat"]
Y = np.array([0, 1, 0, 2, 2, 1, 1, 2])
NAMES = ["cat", "dog", "mat"]


def config(method: str, settings: dict, labels=NAMES) -> AdapterConfig:
    return AdapterConfig(backbone="minilm-l6", fingerprint=FP, dim=DIM, head="linear", labels=list(labels),
                         method=method, lexical=settings)


def vectors(n: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("method", ["lexical", "hybrid"])
def test_round_trip_rebuilds_the_vectoriser_and_serves_the_trained_probabilities(method):
    emb = vectors(len(TEXTS)) if method == "hybrid" else None
    trained = train_lexical(method, TEXTS, Y, NAMES, LexicalParams(), embeddings=emb)
    sealed, weights = encode(config(method, trained.settings), trained.model.tensors())
    adapter = decode(sealed.to_json(), weights, fingerprint=FP, dim=DIM)
    assert adapter.needs_text and adapter.needs_vector == (method == "hybrid")
    unseen = ["a cat on a red mat", "DOGS!", "", "zzz qqq", "café"]
    for a in ("word", "char"):
        served, fitted = adapter.lexical.vectorizers[a], trained.model.vectorizers[a]
        assert served.vocabulary_ == fitted.vocabulary_ and np.array_equal(served.idf_, fitted.idf_)
        assert (served.transform(TEXTS + unseen) != fitted.transform(TEXTS + unseen)).nnz == 0  # exactly
    # The head stage's own counting equals the vectorisers' transform.
    ours, theirs = adapter.lexical.features(TEXTS + unseen), adapter.lexical.sklearn_features(TEXTS + unseen)
    theirs.sort_indices()
    assert np.array_equal(ours.indptr, theirs.indptr) and np.array_equal(ours.indices, theirs.indices)
    assert np.allclose(ours.data, theirs.data, atol=1e-12, rtol=0)
    x = np.zeros((len(unseen), DIM), np.float32) if emb is None else vectors(len(unseen), 1)
    served = adapter.predict_proba(x, unseen)  # temperature 1.0: the model's own probabilities
    expected = trained.classifier.predict_proba(trained.model.design(unseen, x if emb is not None else None))
    assert np.allclose(served, expected, atol=1e-6, rtol=0)
    assert sealed.lexical["word_terms"] == len(trained.model.vectorizers["word"].vocabulary_)
    with pytest.raises(ValueError, match="reads each row's text"):
        adapter.predict_proba(x)


def test_the_served_temperature_applies_to_lexical_logits():
    trained = train_lexical("lexical", TEXTS, Y, NAMES, LexicalParams())
    sealed, weights = encode(AdapterConfig(**{**config("lexical", trained.settings).__dict__, "temperature": 2.5}),
                             trained.model.tensors())
    adapter = decode(sealed.to_json(), weights, fingerprint=FP, dim=DIM)
    z = trained.classifier.decision_function(trained.model.design(TEXTS, None))
    z = np.stack([-z / 2, z / 2], 1) if z.ndim == 1 else z
    p = np.exp(z / 2.5 - (z / 2.5).max(1, keepdims=True))
    assert np.allclose(adapter.predict_proba(np.zeros((len(TEXTS), DIM)), TEXTS), p / p.sum(1, keepdims=True),
                       atol=1e-6)


def random_corpus(docs: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choices(string.ascii_lowercase + "éß0123456789", k=rng.randint(6, 14))) for _ in range(60_000)]
    return [" ".join(rng.choices(words, k=30)) for _ in range(docs)]


def test_the_size_bound_holds_on_a_large_random_vocabulary():
    """60,000 random words, 40 labels: uncapped, the version would need ~100 MB; the
    version keeps the terms of most documents and fits 4 MiB (close to it: not wasteful)."""
    texts, labels = random_corpus(1000), [f"l{i}" for i in range(40)]
    p = LexicalParams()
    fixed = fit_vocabulary(texts, p, len(labels))
    rng = np.random.default_rng(0)
    n = sum(len(v.vocabulary_) for v in fixed.values())
    model = LexicalModel({"word_ngram": [1, 1], "char_ngram": [2, 5], "embedding_weight": None,
                          "word_terms": len(fixed["word"].vocabulary_), "char_terms": len(fixed["char"].vocabulary_)},
                         fixed, rng.normal(size=(40, n)).astype(np.float32), np.zeros(40, np.float32))
    sealed, weights = encode(config("lexical", model.settings, labels), model.tensors())
    assert 3.8 * 2**20 < len(weights) <= lex.MAX_BYTES, len(weights)
    assert len(weights) <= lex.stored_bytes(model.tensors())  # the estimate that cut the vocabulary is an upper bound
    # Both analysers were cut, each keeping its terms of highest document frequency.
    for a, cap in (("word", p.word_terms), ("char", p.char_terms)):
        full = lex._vectorizer(a, (1, 1) if a == "word" else (2, 5)).fit(texts)
        kept = fixed[a].vocabulary_
        assert 0 < len(kept) < min(cap, len(full.vocabulary_))
        idf = {t: full.idf_[i] for t, i in full.vocabulary_.items()}
        assert max(idf[t] for t in kept) <= min(idf[t] for t in full.vocabulary_ if t not in kept) + 1e-12
    adapter = decode(sealed.to_json(), weights, fingerprint=FP, dim=DIM)
    assert adapter.predict_proba(np.zeros((2, DIM)), texts[:2]).shape == (2, 40)
    ours, theirs = adapter.lexical.features(texts[:50]), adapter.lexical.sklearn_features(texts[:50])
    theirs.sort_indices()
    assert np.array_equal(ours.indices, theirs.indices) and np.allclose(ours.data, theirs.data, atol=1e-12)


def test_training_on_a_large_random_vocabulary_stays_within_the_bound():
    texts = random_corpus(600, seed=1)
    labels = [f"l{i}" for i in range(12)]
    y = np.arange(len(texts)) % 12
    trained = train_lexical("hybrid", texts, y, labels, LexicalParams(), embeddings=vectors(len(texts)))
    sealed, weights = encode(config("hybrid", trained.settings, labels), trained.model.tensors())
    assert len(weights) <= lex.MAX_BYTES and trained.summary["bytes"] >= len(weights)
    assert trained.settings["word_terms"] + trained.settings["char_terms"] < 100_000  # cut to fit


def test_an_oversized_or_malformed_version_is_refused():
    trained = train_lexical("lexical", TEXTS, Y, NAMES, LexicalParams())
    good = trained.model.tensors()
    settings = trained.settings

    def refused(tensors, match, cfg=None):
        with pytest.raises(AdapterFormatError, match=match):
            encode(cfg or config("lexical", settings), tensors)

    refused({k: v for k, v in good.items() if k != "lexical.char.idf"}, "missing")
    refused({**good, "lexical.word.offsets": good["lexical.word.offsets"][:-1]}, "offsets")
    refused({**good, "weight": good["weight"][:, :-1]}, "lexical weight")
    refused(good, "word_ngram", config("lexical", {**settings, "word_ngram": [3, 1]}))
    refused(good, "lexical settings", config("lexical", None))
    refused({"weight": np.zeros((3, DIM)), "bias": np.zeros(3)}, "its vocabulary")
    with pytest.raises(AdapterFormatError, match="no vocabulary"):
        encode(AdapterConfig(backbone="b", fingerprint=FP, dim=DIM, head="linear", labels=NAMES), good)
    # 400,000 terms of 8 bytes: over 4 MiB however few the labels.
    terms = [f"{i:08d}" for i in range(400_000)]
    big = {"weight": np.zeros((2, 400_000), np.float32), "bias": np.zeros(2, np.float32),
           "lexical.word.terms": np.frombuffer("".join(terms).encode(), np.uint8).copy(),
           "lexical.word.offsets": np.arange(0, 8 * 400_001, 8, dtype=np.int64),
           "lexical.word.idf": np.ones(400_000, np.float32),
           "lexical.char.terms": np.zeros(0, np.uint8), "lexical.char.offsets": np.zeros(1, np.int64),
           "lexical.char.idf": np.zeros(0, np.float32)}
    refused(big, "at most 4,194,304", config("lexical", settings, ["a", "b"]))
    empty = {f"lexical.{a}.{p}": np.zeros(1 if p == "offsets" else 0, np.int64 if p == "offsets" else
                                          np.uint8 if p == "terms" else np.float32)
             for a in ("word", "char") for p in ("terms", "offsets", "idf")}
    refused({**empty, "weight": np.zeros((3, 0), np.float32), "bias": np.zeros(3, np.float32)}, "at least one term")
    # Bytes that are not UTF-8, or a repeated term, are refused at load.
    bad = dict(good)
    bad["lexical.word.terms"] = good["lexical.word.terms"].copy()
    bad["lexical.word.terms"][0] = 0xFF
    sealed, weights = encode(config("lexical", settings), bad)
    with pytest.raises(AdapterFormatError, match="UTF-8"):
        decode(sealed.to_json(), weights, fingerprint=FP, dim=DIM)


# -- with the real backbone ------------------------------------------------------------


@pytest.fixture(scope="module")
def backbone(graft_home):
    return load_backbone("minilm-l6", graft_home, provider="cpu")


def held_out_accuracy(backbone, out, held_out) -> float:
    adapter = decode(out.config.to_json(), out.weights, fingerprint=backbone.fingerprint, dim=backbone.dim)
    rows = backbone_pass(backbone, [Work(t, adapter, t) for t, _ in held_out])
    return float(np.mean([adapter.labels[int(r.scores.argmax())] == label for r, (_, label) in zip(rows, held_out)]))


@pytest.fixture(scope="module")
def trained(backbone):
    train, held_out = code_split()
    outs = {m: train_version(train, backbone, {"method": m}, active=None, cache=DictCache(),
                             report=Events(), promote_margin=0.01, job_id=m)
            for m in ("head", "lexical", "hybrid")}
    return outs, {m: held_out_accuracy(backbone, out, held_out) for m, out in outs.items()}


def test_lexical_beats_a_head_where_word_identity_decides_the_label(trained):
    outs, accuracy = trained
    assert accuracy["lexical"] >= 0.95 and accuracy["lexical"] >= accuracy["head"] + 0.15, accuracy
    assert accuracy["hybrid"] >= accuracy["head"] + 0.1, accuracy
    for m in ("lexical", "hybrid"):
        out = outs[m]
        assert out.promote and out.config.method == m and out.config.labels == sorted(LABELS)
        assert out.config.training["method"] == m and out.config.training["features"] > 0
        assert out.metrics["baselines"]["zero_shot"] and "calibration" in out.metrics
        assert (out.config.lexical["embedding_weight"] is None) == (m == "lexical")


def test_lexical_training_reports_its_vocabulary_and_skips_the_training_vectors(backbone):
    train, _ = code_split()
    cache, report = DictCache(), Events()
    train_version(train, backbone, {"method": "lexical"}, active=None, cache=cache, report=report,
                  promote_margin=0.01)
    vocabulary = [d for k, d in report.events if k == "vocabulary"]
    assert vocabulary and vocabulary[0]["word_terms"] > 36 and report.events[-1][0] == "evaluation"
    y = np.array([sorted(LABELS).index(e["label"]) for e in train])
    assert cache.stored == len(stratified_split(y, 0.2, 0)[1])  # only the validation rows embedded (baselines)


def test_an_active_lexical_version_is_the_baseline_of_the_next(backbone, trained):
    outs, _ = trained
    train, _ = code_split()
    active = decode(outs["lexical"].config.to_json(), outs["lexical"].weights, fingerprint=backbone.fingerprint,
                    dim=backbone.dim, version=1)
    out = train_version(train, backbone, {"method": "head", "continual": True, "epochs": 5}, active=active,
                        cache=DictCache(), report=Events(), promote_margin=0.01)
    assert out.metrics["baselines"]["active"]["macro_f1"] >= 0.95 and not out.promote


def test_image_backbones_refuse_lexical_methods(graft_home):
    image = load_backbone("efficientnet-lite0", graft_home, provider="cpu")
    with pytest.raises(InvalidParams, match="image backbone"):
        train_version([{"image": "x", "label": "a"}] * 4, image, {"method": "lexical"}, active=None,
                      cache=DictCache(), report=Events(), promote_margin=0.01)


def test_the_head_stage_serves_lexical_hybrid_and_head_rows_of_one_batch(backbone, trained):
    """One pass over rows of three adapters (as three tenants' requests share one): each row's
    scores equal its adapter applied alone, lexical rows took no part in the graph."""
    outs, _ = trained
    adapters = {m: decode(o.config.to_json(), o.weights, fingerprint=backbone.fingerprint, dim=backbone.dim)
                for m, o in outs.items()}
    texts = [t for t, _ in code_split()[1]][:30] + [e["text"] for e in split()[0]][:6]
    order = [("lexical", "hybrid", "head")[i % 3] for i in range(len(texts))]
    rows = backbone_pass(backbone, [Work(t, adapters[m], t) for t, m in zip(texts, order)])
    vec = backbone.embed(texts).vectors
    for i, (t, m) in enumerate(zip(texts, order)):
        alone = adapters[m].predict_proba(vec[i : i + 1], [t])[0]
        assert np.allclose(rows[i].scores, alone, atol=1e-5), (m, t)
        assert (not rows[i].vector.any()) == (m == "lexical")


def test_nbytes_covers_what_a_loaded_lexical_adapter_holds():
    """The adapter cache evicts by Adapter.nbytes: it must not undercount the vectoriser's
    vocabulary dicts (measured with tracemalloc from decode through a first predict)."""
    import tracemalloc

    texts = random_corpus(400, seed=2)
    trained = train_lexical("lexical", texts, np.arange(400) % 3, NAMES, LexicalParams())
    sealed, weights = encode(config("lexical", trained.settings), trained.model.tensors())
    tracemalloc.start()
    try:
        adapter = decode(sealed.to_json(), weights, fingerprint=FP, dim=DIM)
        adapter.predict_proba(np.zeros((2, DIM)), texts[:2])
        resident, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert trained.settings["word_terms"] + trained.settings["char_terms"] > 20_000
    assert resident <= adapter.nbytes <= 1.5 * resident, (resident, adapter.nbytes)
