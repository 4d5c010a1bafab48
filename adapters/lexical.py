"""Lexical and hybrid adapters: TF-IDF word and character n-grams and a linear model,
trained from scratch on the tenant's texts with scikit-learn.

"lexical" reads only the text: where the words themselves decide the label (product codes,
names, jargon a sentence encoder blurs), a model of them beats a head on frozen vectors.
"hybrid" reads both: the n-gram features and the backbone's vector (scaled by
`embedding_weight`) side by side, one linear model on the concatenation (measured against
stacking the two models' probabilities on Rotten Tomatoes: docs/BENCHMARKS.md).

A version stores, as safetensors beside the usual `weight` and `bias`, each analyser's
vocabulary (`lexical.<word|char>.terms`: the terms' UTF-8 bytes end to end, `.offsets`:
where each starts, n + 1 of them) and IDF (`.idf`, float32), and in its config the settings
that rebuild the vectoriser exactly (`AdapterConfig.lexical`). The vocabulary is capped by
document frequency so the whole version stays within `MAX_BYTES`, whatever the tenant sends.
Training rounds the IDF to float32 before it fits the model, so the vectoriser served is
the one trained: served probabilities equal the trained model's.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from itertools import repeat
from typing import Any, Callable

import numpy as np

LEXICAL_METHODS = ("lexical", "hybrid")
MAX_BYTES = 4 * 1024 * 1024  # a lexical or hybrid version's safetensors, at most
PREFIX = "lexical."
ANALYZERS = ("word", "char")
# What TfidfVectorizer is built with (stored per version, so a later default cannot change it).
_WORD = {"analyzer": "word", "token_pattern": r"(?u)\b\w\w+\b"}
_CHAR = {"analyzer": "char_wb"}
_SAFETENSORS_SLACK = 4096  # the safetensors header (tensor names, shapes, offsets) and rounding
# Resident bytes per vocabulary term beyond its stored bytes (the vectoriser's dict entry and
# str object), for the adapter cache's accounting (Adapter.nbytes): ~180 measured
# (tests/unit/test_lexical.py).
TERM_BYTES = 200


class LexicalFormatError(ValueError):
    """A lexical version's tensors or settings do not fit together (adapters.format turns
    it into AdapterFormatError)."""


@dataclass(frozen=True)
class LexicalParams:
    """The recipe; the defaults were chosen by 5-fold cross-validation on the 2,000 Rotten
    Tomatoes training reviews of loadtests/bench_lexical.py, its test split unseen
    (`python -m loadtests.bench_lexical --select`; docs/BENCHMARKS.md): word 1-grams with
    char_wb 2-5-grams and C 3 scored best (word 1-2 or 1-3 grams, char_wb 2-4 or 3-5 within
    half a point); hybrid: the vector at 0.75 beside the two TF-IDF blocks, C 0.3. At most
    50,000 terms an analyser (then fewer, to fit max_bytes)."""

    word_ngram: tuple[int, int] = (1, 1)
    char_ngram: tuple[int, int] = (2, 5)
    word_terms: int = 50_000  # most terms kept per analyser, by document frequency
    char_terms: int = 50_000
    C: float | None = None  # inverse L2 strength of the logistic regression; None: 3 (lexical), 0.3 (hybrid)
    embedding_weight: float = 0.75  # hybrid: the (unit) vector's scale beside the two unit TF-IDF blocks
    max_bytes: int = MAX_BYTES
    seed: int = 0


def _vectorizer(analyzer: str, ngram: tuple[int, int] | list[int]):  # -> TfidfVectorizer
    from sklearn.feature_extraction.text import TfidfVectorizer

    fixed = _WORD if analyzer == "word" else _CHAR
    return TfidfVectorizer(**fixed, ngram_range=tuple(ngram), lowercase=True, sublinear_tf=True, norm="l2",
                           smooth_idf=True, use_idf=True, min_df=1, dtype=np.float64)


@dataclass
class LexicalModel:
    """The served (and trained) model: the analysers with their fixed vocabulary and IDF,
    and a linear model over [word features, char features, (hybrid) weight x vector]."""

    settings: dict[str, Any]
    vectorizers: dict[str, Any]  # analyser -> TfidfVectorizer (fixed vocabulary, idf_), None: no term
    weight: np.ndarray  # (labels, features)
    bias: np.ndarray

    @property
    def hybrid(self) -> bool:
        return self.settings.get("embedding_weight") is not None

    def terms(self, analyzer: str) -> int:
        v = self.vectorizers[analyzer]
        return 0 if v is None else len(v.vocabulary_)

    def features(self, texts: list[str]):  # -> scipy.sparse.csr_matrix (rows, n-gram features)
        """Both analysers' TF-IDF rows side by side: what their TfidfVectorizer.transform gives
        (`sklearn_features`; equal to float64 rounding, tested): the vectoriser's own analyser,
        then counts, sublinear tf, IDF and L2 norm per analyser here, without sklearn's
        per-call checks and per-n-gram dict loop (a lone review: 0.34 ms of CPU instead of 1.2)."""
        import scipy.sparse as sp

        tables, idf, n = self._tables
        indptr, cols, values = [0], [], []
        for text in texts:
            size = 0
            for analyze, get, offset in tables:
                grams = Counter(analyze(text))
                ids = np.fromiter(map(get, grams, repeat(-1)), np.int64, len(grams))
                counts = np.fromiter(grams.values(), np.float64, len(grams))
                known = ids >= 0
                ids = ids[known] + offset
                tfidf = (np.log(counts[known]) + 1.0) * idf[ids]
                norm = np.sqrt(tfidf @ tfidf)
                cols.append(ids)
                values.append(tfidf / norm if norm > 0 else tfidf)
                size += len(ids)
            indptr.append(indptr[-1] + size)
        x = sp.csr_matrix((np.concatenate(values) if values else np.zeros(0),
                           np.concatenate(cols) if cols else np.zeros(0, np.int64), np.array(indptr)),
                          shape=(len(texts), n))
        x.sort_indices()
        return x

    @property
    def _tables(self) -> tuple[list[tuple[Any, Any, int]], np.ndarray, int]:
        """(analyser, vocabulary.get, first column) per present analyser, the IDF of every
        column, the column count (cached)."""
        cached = self.__dict__.get("_tables_cache")
        if cached is None:
            tables, idf, offset = [], [], 0
            for a in ANALYZERS:
                if (v := self.vectorizers[a]) is not None:
                    tables.append((v.build_analyzer(), v.vocabulary_.get, offset))
                    idf.append(np.asarray(v.idf_, np.float64))
                    offset += len(v.vocabulary_)
            cached = (tables, np.concatenate(idf) if idf else np.zeros(0), offset)
            self.__dict__["_tables_cache"] = cached
        return cached

    def sklearn_features(self, texts: list[str]):  # -> csr_matrix: the vectorisers' own transform
        import scipy.sparse as sp

        parts = [v.transform(texts) for a in ANALYZERS if (v := self.vectorizers[a]) is not None]
        return sp.hstack(parts, format="csr")

    def design(self, texts: list[str], embeddings: np.ndarray | None):  # -> csr_matrix: what the model reads
        import scipy.sparse as sp

        x = self.features(texts)
        if not self.hybrid:
            return x
        assert embeddings is not None, "a hybrid adapter reads the backbone's vectors too"
        return sp.hstack([x, sp.csr_matrix(float(self.settings["embedding_weight"]) * embeddings.astype(np.float64))],
                         format="csr")

    @property
    def _blocks(self) -> tuple[np.ndarray, np.ndarray | None]:
        """W^T for the n-gram features, and for the vector (hybrid), float64 (cached)."""
        cached = self.__dict__.get("_blocks_cache")
        if cached is None:
            n = sum(self.terms(a) for a in ANALYZERS)
            w = self.weight.astype(np.float64)
            cached = (np.ascontiguousarray(w[:, :n].T),
                      np.ascontiguousarray(w[:, n:].T) * float(self.settings["embedding_weight"]) if self.hybrid else None)
            self.__dict__["_blocks_cache"] = cached
        return cached

    def logits(self, texts: list[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        lexical, vector = self._blocks
        out = self.features(texts) @ lexical + self.bias.astype(np.float64)
        if vector is not None:
            assert embeddings is not None, "a hybrid adapter reads the backbone's vectors too"
            out = out + embeddings.astype(np.float64) @ vector
        return np.asarray(out)

    def predict_proba(self, texts: list[str], embeddings: np.ndarray | None = None) -> np.ndarray:
        logits = self.logits(texts, embeddings)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    # -- the version's tensors -----------------------------------------------------------

    def tensors(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"weight": self.weight.astype(np.float32), "bias": self.bias.astype(np.float32)}
        for a in ANALYZERS:
            v = self.vectorizers[a]
            terms = [] if v is None else sorted(v.vocabulary_, key=v.vocabulary_.__getitem__)  # column order
            encoded = [t.encode("utf-8") for t in terms]
            out[f"{PREFIX}{a}.terms"] = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
            out[f"{PREFIX}{a}.offsets"] = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
            out[f"{PREFIX}{a}.idf"] = np.asarray([] if v is None else v.idf_, dtype=np.float32)
        return out

    @classmethod
    def from_tensors(cls, settings: dict[str, Any] | None, tensors: dict[str, np.ndarray],
                     labels: int, dim: int) -> "LexicalModel":
        """Rebuild the trained model from a version; LexicalFormatError when its parts do not fit."""
        check(settings, tensors, labels, dim)
        assert settings is not None
        vectorizers = {}
        for a in ANALYZERS:
            raw = tensors[f"{PREFIX}{a}.terms"].tobytes()
            offsets = tensors[f"{PREFIX}{a}.offsets"]
            try:
                terms = [raw[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(len(offsets) - 1)]
            except UnicodeDecodeError:
                raise LexicalFormatError(f"the {a} vocabulary is not UTF-8") from None
            if len(set(terms)) != len(terms):
                raise LexicalFormatError(f"the {a} vocabulary repeats a term")
            if not terms:
                vectorizers[a] = None
                continue
            v = _vectorizer(a, settings[f"{a}_ngram"])
            v.vocabulary = {t: i for i, t in enumerate(terms)}
            v.idf_ = tensors[f"{PREFIX}{a}.idf"].astype(np.float64)  # also fixes vocabulary_
            vectorizers[a] = v
        return cls(dict(settings), vectorizers, tensors["weight"], tensors["bias"])


def resident_extra(tensors: dict[str, np.ndarray]) -> int:
    """What a loaded lexical adapter holds beyond its tensors: each term in the vectoriser's
    dicts, and the weight again in float64 (LexicalModel._blocks)."""
    terms = sum(len(tensors[f"{PREFIX}{a}.idf"]) for a in ANALYZERS if f"{PREFIX}{a}.idf" in tensors)
    return TERM_BYTES * terms + 2 * tensors["weight"].nbytes


def width(settings: dict[str, Any] | None, tensors: dict[str, np.ndarray], dim: int) -> int:
    """How many features the linear model reads: the terms of both analysers (+ dim, hybrid)."""
    n = sum(len(tensors.get(f"{PREFIX}{a}.idf", ())) for a in ANALYZERS)
    return n + (dim if settings and settings.get("embedding_weight") is not None else 0)


def check(settings: dict[str, Any] | None, tensors: dict[str, np.ndarray], labels: int, dim: int) -> None:
    """Settings and tensors of a lexical or hybrid version: every analyser's terms, offsets
    and IDF, consistent, and a weight over exactly their features (and the vector: hybrid)."""
    if not settings:
        raise LexicalFormatError("a lexical adapter needs its lexical settings: word_ngram, char_ngram")
    for a in ANALYZERS:
        ngram = settings.get(f"{a}_ngram")
        if not (isinstance(ngram, (list, tuple)) and len(ngram) == 2 and all(isinstance(n, int) for n in ngram)
                and 1 <= ngram[0] <= ngram[1] <= 8):
            raise LexicalFormatError(f"{a}_ngram must be [low, high] with 1 <= low <= high <= 8, not {ngram!r}")
    expected = {"weight", "bias", *(f"{PREFIX}{a}.{part}" for a in ANALYZERS for part in ("terms", "offsets", "idf"))}
    if set(tensors) != expected:
        unknown, missing = sorted(set(tensors) - expected), sorted(expected - set(tensors))
        raise LexicalFormatError("a lexical adapter carries weight, bias and lexical.<word|char>.<terms|offsets|idf>; "
                                 + (f"unknown: {unknown[:3]}" if unknown else f"missing: {missing[:3]}"))
    for a in ANALYZERS:
        terms, offsets, idf = (tensors[f"{PREFIX}{a}.{p}"] for p in ("terms", "offsets", "idf"))
        if terms.dtype != np.uint8 or terms.ndim != 1 or offsets.dtype.kind not in "iu" or offsets.ndim != 1:
            raise LexicalFormatError(f"lexical.{a}.terms must be uint8 bytes and .offsets integers")
        if idf.ndim != 1 or len(offsets) != len(idf) + 1 or offsets[0] != 0 or offsets[-1] != len(terms) \
                or np.any(np.diff(offsets) <= 0):
            raise LexicalFormatError(f"lexical.{a}: {len(idf)} IDF values need {len(idf) + 1} increasing offsets "
                                     f"from 0 to the terms' {len(terms)} bytes")
        if not np.all(np.isfinite(idf)) or np.any(idf < 1.0):
            raise LexicalFormatError(f"lexical.{a}.idf holds values a smoothed IDF cannot take (< 1 or not finite)")
    n = width(settings, tensors, dim)
    if width(settings, tensors, 0) == 0:  # the terms alone
        raise LexicalFormatError("a lexical adapter needs at least one term")
    if tuple(tensors["weight"].shape) != (labels, n) or tuple(tensors["bias"].shape) != (labels,):
        raise LexicalFormatError(f"lexical weight {tuple(tensors['weight'].shape)} and bias "
                                 f"{tuple(tensors['bias'].shape)}: expected ({labels}, {n}) and ({labels},)")


def stored_bytes(tensors: dict[str, np.ndarray]) -> int:
    """The version's size as encode stores it (integers kept, floats as float32), with the
    safetensors header's slack."""
    return sum(t.size * (t.dtype.itemsize if t.dtype.kind in "iu" else 4) for t in tensors.values()) \
        + _SAFETENSORS_SLACK


@dataclass(frozen=True)
class TrainedLexical:
    model: LexicalModel
    classifier: Any  # the fitted sklearn LogisticRegression (model holds its weights as the version stores them)
    settings: dict[str, Any]  # the version's AdapterConfig.lexical
    summary: dict[str, Any]  # for the version's training record and the job's events


def _ranked(v) -> list[str]:  # a fitted vectoriser's terms, most documents first (then by term)
    idf = v.idf_  # smoothed idf falls as document frequency rises
    return sorted(v.vocabulary_, key=lambda t: (idf[v.vocabulary_[t]], t))


def _fixed(analyzer: str, ngram: tuple[int, int], terms: list[str], idf: dict[str, float]):
    if not terms:
        return None
    v = _vectorizer(analyzer, ngram)
    v.vocabulary = {t: i for i, t in enumerate(sorted(terms))}
    # Rounded to float32 here, as the version stores it: the model trains on what will serve.
    v.idf_ = np.array([idf[t] for t in sorted(terms)], dtype=np.float32).astype(np.float64)
    return v


def fit_vocabulary(texts: list[str], p: LexicalParams, labels: int, extra: int = 0) -> dict[str, Any]:
    """Each analyser fitted on `texts`, its terms cut to the most frequent by document
    frequency: at most word_terms / char_terms, and both shrunk alike until the version
    (terms, offsets, IDF, a weight row per label, `extra` more weight columns) fits
    p.max_bytes. Returns analyser -> fixed TfidfVectorizer."""
    ranked, idf = {}, {}
    for a, ngram in (("word", p.word_ngram), ("char", p.char_ngram)):
        v = _vectorizer(a, ngram)
        try:
            v.fit(texts)
        except ValueError:  # no term at all (texts of one-letter words, say): an empty analyser
            ranked[a], idf[a] = [], {}
            continue
        ranked[a], idf[a] = _ranked(v), {t: float(v.idf_[i]) for t, i in v.vocabulary_.items()}
    caps = {"word": min(p.word_terms, len(ranked["word"])), "char": min(p.char_terms, len(ranked["char"]))}
    per_term = {a: np.cumsum([len(t.encode("utf-8")) + 8 + 4 + 4 * labels for t in ranked[a]]) for a in ANALYZERS}
    fixed_bytes = 4 * labels * (extra + 1) + 2 * 8 + _SAFETENSORS_SLACK

    def size(f: float) -> int:
        return fixed_bytes + sum(int(per_term[a][n - 1]) if (n := math.floor(caps[a] * f)) else 0 for a in ANALYZERS)

    fraction = 1.0
    if size(1.0) > p.max_bytes:
        low, high = 0.0, 1.0  # the largest fraction of both caps that fits
        for _ in range(40):
            mid = (low + high) / 2
            low, high = (mid, high) if size(mid) <= p.max_bytes else (low, mid)
        fraction = low
    kept = {a: ranked[a][: math.floor(caps[a] * fraction)] for a in ANALYZERS}
    if not kept["word"] and not kept["char"]:
        raise ValueError("the texts hold no word or character n-gram to learn from")
    return {a: _fixed(a, ngram, kept[a], idf[a])
            for a, ngram in (("word", p.word_ngram), ("char", p.char_ngram))}


def train_lexical(method: str, texts: list[str], y: np.ndarray, labels: list[str], p: LexicalParams,
                  embeddings: np.ndarray | None = None,
                  report: Callable[[str, dict[str, Any]], None] = lambda kind, data: None) -> TrainedLexical:
    """Fit the vocabulary and the logistic regression (class-balanced, multinomial) on the
    training texts (and, hybrid, their vectors)."""
    from sklearn.linear_model import LogisticRegression

    if method not in LEXICAL_METHODS:
        raise ValueError(f"method {method!r} is not lexical")
    hybrid = method == "hybrid"
    if hybrid and embeddings is None:
        raise ValueError("a hybrid adapter trains on the texts' vectors too")
    started = time.perf_counter()
    dim = embeddings.shape[1] if hybrid and embeddings is not None else 0
    vectorizers = fit_vocabulary(texts, p, len(labels), extra=dim)
    settings: dict[str, Any] = {"word_ngram": list(p.word_ngram), "char_ngram": list(p.char_ngram),
                                "embedding_weight": p.embedding_weight if hybrid else None,
                                "word_terms": 0, "char_terms": 0}
    model = LexicalModel(settings, vectorizers, np.zeros((len(labels), 0), np.float32), np.zeros(len(labels), np.float32))
    settings.update({f"{a}_terms": model.terms(a) for a in ANALYZERS})
    x = model.design(texts, embeddings)
    vocab_s = time.perf_counter() - started
    report("vocabulary", {"word_terms": settings["word_terms"], "char_terms": settings["char_terms"],
                          "features": x.shape[1], "seconds": round(vocab_s, 3)})
    C = p.C if p.C is not None else (0.3 if hybrid else 3.0)
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=p.seed)
    clf.fit(x, y)
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: sigmoid(z) is the softmax of (-z/2, z/2)
        coef, intercept = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-intercept / 2, intercept / 2])
    if len(clf.classes_) != len(labels):
        raise ValueError("every label needs a training example")
    trained = LexicalModel(settings, vectorizers, coef.astype(np.float32), intercept.astype(np.float32))
    summary = {"features": int(x.shape[1]), "word_terms": settings["word_terms"], "char_terms": settings["char_terms"],
               "fit_seconds": round(time.perf_counter() - started, 3), "params": {**asdict(p), "C": C},
               "bytes": stored_bytes(trained.tensors())}
    return TrainedLexical(trained, clf, settings, summary)
