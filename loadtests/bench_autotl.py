"""`make bench`: AutoTL (`params.method: "auto"`, adapters/auto.py) on Rotten Tomatoes.

bench_deep's split (the first 2,000 reviews to train from, the next 1,000 as the bench's own
test reviews, never shown to the job), at five sizes: full data (every review but those
1,000: 11,808, with `--full-budget` seconds, since the default 120 would skip LoRA there), all
2,000, the first 1,000, the first 400 (where LoRA starts being a candidate: adapters/auto.py
LORA_MIN_EXAMPLES) and 8 per class. `--pool-from` and `--test-from` draw the sizes and the
test reviews elsewhere (a check on reviews the default run never reads). Each size is one
fine-tune as the worker runs it (adapters/auto.py `train_auto`, what train_version
dispatches to; a fresh embedding cache; MiniLM-L6 as served, split for deep adapters at 2
layers): every candidate auto tried is also evaluated on the bench's test
reviews as it would serve (the candidate's version decoded, rows through the head stage, or
the split graphs for LoRA), so the table shows what each candidate would have scored, what
auto chose from validation alone, and the seconds from examples to version (the bench's own
evaluations excluded).
"""
from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.bench_deep import _Report, _RunCache, macro_f1
from loadtests.common import publish
from loadtests.data import rotten_tomatoes

BEGIN, END = "<!-- bench_autotl:begin -->", "<!-- bench_autotl:end -->"


def per_class(rows: list[tuple[str, str]], k: int) -> list[tuple[str, str]]:
    seen: dict[str, int] = {}
    out = []
    for t, label in rows:
        if seen.get(label, 0) < k:
            seen[label] = seen.get(label, 0) + 1
            out.append((t, label))
    return out


def served(backbone: Any, candidate: Any, labels: list[str], texts: list[str], x: np.ndarray) -> list[str]:
    """The candidate's predictions for the bench's test reviews, as its version would serve them."""
    from adapters.format import AdapterConfig, encode

    config, weights = encode(AdapterConfig(backbone=backbone.id, fingerprint=backbone.fingerprint, dim=backbone.dim,
                                           head=candidate.head, labels=labels, **candidate.config), candidate.tensors)
    return served_version(backbone, config, weights, texts, x)


def served_version(backbone: Any, config: Any, weights: bytes, texts: list[str], x: np.ndarray) -> list[str]:
    """A version's predictions for the bench's test reviews, decoded and served as the Engine would."""
    from adapters.format import decode

    labels = config.labels
    adapter = decode(config.to_json(), weights, fingerprint=backbone.fingerprint, dim=backbone.dim,
                     split=backbone.split_shape.split if backbone.split_shape is not None else None)
    if adapter.deep is not None:
        vectors = np.concatenate([backbone.embed_deep(texts[i : i + 64], [adapter.deep] * len(texts[i : i + 64])).vectors
                                  for i in range(0, len(texts), 64)])
        logits = adapter.logits(vectors, texts if adapter.needs_text else None)  # lora-hybrid reads both
    else:
        logits = adapter.logits(x, texts if adapter.needs_text else None)
    return [labels[int(i)] for i in logits.argmax(1)]


def run(backbone: Any, train: list[dict[str, str]], test_texts: list[str], test_x: np.ndarray,
        test_labels: list[str], budget: float) -> dict[str, Any]:
    from adapters.auto import train_auto

    labels = sorted({e["label"] for e in train})
    rows: list[dict[str, Any]] = []
    spent = [0.0]  # the bench's own evaluations, excluded from the job's time

    def on_candidate(c: Any) -> None:
        t0 = time.perf_counter()
        rows.append({"candidate": c.name, "validation": c.score, "seconds": c.seconds,
                     "test": macro_f1(test_labels, served(backbone, c, labels, test_texts, test_x))})
        if c.refit is not None:  # cross-validation: what it would serve if chosen (refit on train + validation)
            rows[-1]["refit"] = macro_f1(test_labels, served(backbone, c.refit(), labels, test_texts, test_x))
        print(rows[-1], flush=True)
        spent[0] += time.perf_counter() - t0

    events: list[tuple[str, dict[str, Any]]] = []

    class Report(_Report):
        def event(self, kind: str, data: dict[str, Any]) -> None:
            events.append((kind, data))

    started = time.perf_counter()
    outcome = train_auto(train, backbone, {"method": "auto", "time_budget_s": budget}, active=None,
                         cache=_RunCache(), report=Report(), promote_margin=0.01, on_candidate=on_candidate)
    seconds = time.perf_counter() - started - spent[0]
    chosen = outcome.config.training["chosen"]
    skipped = [d["candidate"] for k, d in events if k == "candidate_skipped"]
    return {"rows": rows, "chosen": chosen, "seconds": seconds, "skipped": skipped,
            "auto": macro_f1(test_labels, served_version(backbone, outcome.config, outcome.weights, test_texts, test_x)),
            "split": outcome.metrics["split"], "internal": outcome.metrics["macro_f1"],
            "n": len(train), "train": outcome.config.training["train"],
            "validation": outcome.config.training["validation"], "test": outcome.config.training["test"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--budget", type=float, default=120.0, help="params.time_budget_s")
    parser.add_argument("--sizes", default="full,2000,1000,400,8",
                        help="which sizes: full (every review but the test 1,000), 2000, 1000, 400, 8 (per class)")
    parser.add_argument("--full-budget", type=float, default=900.0,
                        help="params.time_budget_s of the full-data job (the default 120 s would skip LoRA there)")
    parser.add_argument("--draws", type=int, default=1,
                        help="8 per class: this many draws (draw 0: the pool's first 8 a class; draw d: the first 8 a "
                             "class of the pool shuffled with seed d)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--pool-from", type=int, default=0,
                        help="the sizes' reviews start at this review (another draw of reviews: 4000)")
    parser.add_argument("--test-from", type=int, default=2000, help="the 1,000 test reviews start here")
    args = parser.parse_args()
    import torch

    from models import load_backbone
    from models.int8 import cpu_features
    from service.settings import Settings

    torch.set_num_threads(args.threads)
    home = Settings().home.resolve()
    backbone = load_backbone("minilm-l6", home, split_layers=2)
    reviews = rotten_tomatoes()
    tested = range(args.test_from, args.test_from + 1000)
    pool, test = reviews[args.pool_from : args.pool_from + 2000], reviews[tested.start : tested.stop]
    if set(range(args.pool_from, args.pool_from + 2000)) & set(tested):
        parser.error("the pool and the test reviews overlap")
    full = [r for i, r in enumerate(reviews) if i not in tested]  # every review the test 1,000 leave
    test_texts, test_labels = [t for t, _ in test], [label for _, label in test]
    test_x = np.concatenate([backbone.embed(test_texts[i : i + 64]).vectors for i in range(0, len(test_texts), 64)])
    results = []
    wanted = args.sizes.split(",")
    sizes = [(name, rows) for key, name, rows in (("full", f"full, {len(full):,}", full), ("2000", "2,000", pool),
                                                   ("1000", "1,000", pool[:1000]), ("400", "400", pool[:400]))
             if key in wanted]
    if "8" in wanted:
        for d in range(args.draws):
            shuffled = pool if d == 0 else random.Random(d).sample(pool, len(pool))
            sizes.append(("8 per class" + (f", draw {d}" if args.draws > 1 else ""), per_class(shuffled, 8)))
    for name, rows in sizes:
        r = run(backbone, [{"text": t, "label": label} for t, label in rows], test_texts, test_x, test_labels,
                args.full_budget if name.startswith("full") else args.budget)
        r["size"] = name
        results.append(r)
        print({k: v for k, v in r.items() if k != "rows"}, flush=True)
    cpu = cpu_features()
    lines = [
        ("Rotten Tomatoes, bench_deep's split: the job trains on every review but the test 1,000 (full), the first "
         "2,000 reviews, the first 1,000, 400, or the first 8 per class (draw d > 0: of the 2,000 shuffled with seed "
         "d); every figure is macro-F1 on the next 1,000 reviews, which no job sees."
         if (args.pool_from, args.test_from) == (0, 2000) else
         f"Rotten Tomatoes, other reviews than bench_deep's: the sizes are drawn from reviews {args.pool_from:,} on, "
         f"full data is every review but the test 1,000 ({args.test_from:,}-{args.test_from + 999:,}); every figure "
         f"is macro-F1 on those test reviews, which no job sees.")
        + f" One run per size, in process with {args.threads} torch threads, "
        f"`time_budget_s` {args.budget:g} ({args.full_budget:g} for full data) (CPU: {cpu.machine}, flags "
        f"{' '.join(cpu.flags)}; MiniLM-L6 as served: {backbone.precision}, split at 2 layers for LoRA; host load "
        f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores). Auto splits the examples once: "
        "train / validation / test (60/20/20, stratified; no test split under 10 examples a class); every "
        "candidate trains on train, is compared on validation (few-shot sets, a class of 32 or fewer: by "
        "cross-validation over train + validation, the validation split one of the folds; \"selection\" is that "
        "score), and only the chosen one meets auto's own test split; each candidate's test figure is its model "
        "trained on the train split; few-shot sets: auto serves the chosen candidate refit on train + validation, "
        "so \"refit\" is each candidate's figure as it would serve if chosen, and \"best candidate\" compares those. "
        "\"s\" is the candidate's training time inside the job (all its folds); "
        "examples → version is the whole job "
        "(embedding, every candidate, the refit, calibration, test evaluation, encoding), the bench's own "
        "evaluations excluded.", "",
        "| examples | candidate | selection macro-F1 | test macro-F1 | test, refit | s | chosen |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        for row in r["rows"]:
            refit = f"{row['refit']:.3f}" if "refit" in row else ""
            lines.append(f"| {r['size']} | {row['candidate']} | {row['validation']:.3f} | {row['test']:.3f} | "
                         f"{refit} | {row['seconds']:.1f} | {'**chosen**' if row['candidate'] == r['chosen'] else ''} |")
        for s in r["skipped"]:
            lines.append(f"| {r['size']} | {s} | skipped (time budget or too few examples) | | | | |")
    lines += ["", "| examples | auto's choice | auto test macro-F1 | best candidate (test) | auto − best | "
                  "head (train split) | auto − head | best of head, lexical | examples → version s | "
                  "splits (train/val/test) |",
              "|---|---|---:|---|---:|---:|---:|---:|---:|---|"]

    def serves(row: dict[str, Any]) -> float:
        return row.get("refit", row["test"])

    for r in results:
        best = max(r["rows"], key=serves)
        head = next(row["test"] for row in r["rows"] if row["candidate"] == "head")
        base = max((serves(row) for row in r["rows"] if row["candidate"] in ("head", "lexical")), default=float("nan"))
        lines.append(f"| {r['size']} | {r['chosen']} | {r['auto']:.3f} | {best['candidate']} {serves(best):.3f} | "
                     f"{r['auto'] - serves(best):+.3f} | {head:.3f} | {r['auto'] - head:+.3f} | {base:.3f} | "
                     f"{r['seconds']:.1f} | {r['train']}/{r['validation']}/{r['test'] or '—'} |")
    draws = [r for r in results if r["size"].startswith("8 per class")]
    if len(draws) > 1:  # the mean over draws: each candidate as one fixed method
        names = [row["candidate"] for row in draws[0]["rows"]]
        means = {n: float(np.mean([serves(next(row for row in r["rows"] if row["candidate"] == n)) for r in draws]))
                 for n in names if all(any(row["candidate"] == n for row in r["rows"]) for r in draws)}
        top = max(means, key=means.__getitem__)
        auto_mean = float(np.mean([r["auto"] for r in draws]))
        head = float(np.mean([next(row["test"] for row in r["rows"] if row["candidate"] == "head") for r in draws]))
        chosen = ", ".join(f"{n} {sum(r['chosen'] == n for r in draws)}" for n in names
                           if any(r["chosen"] == n for r in draws))
        lines.append(f"| 8 per class, mean of {len(draws)} draws | {chosen} | {auto_mean:.3f} | {top} {means[top]:.3f} | "
                     f"{auto_mean - means[top]:+.3f} | {head:.3f} | {auto_mean - head:+.3f} | "
                     f"{max(means.get('head', float('nan')), means.get('lexical', float('nan'))):.3f} | "
                     f"{np.mean([r['seconds'] for r in draws]):.1f} | |")
    publish("\n".join(lines), args.out, BEGIN, END)


if __name__ == "__main__":
    main()
