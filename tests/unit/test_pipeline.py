"""The fine-tune pipeline on its own: no server, no database (a dict is the embedding cache,
a list the reporter)."""
from __future__ import annotations

from typing import Any

import pytest

from adapters.format import decode
from adapters.pipeline import decide, train_version
from adapters.training import Cancelled
from models import load_backbone
from tests.integration.data import split

TRAIN, _ = split()


class DictCache:
    def __init__(self) -> None:
        self.vectors: dict[tuple[str, str], bytes] = {}
        self.stored = 0

    def cached_embeddings(self, fingerprint: str, keys: list[str]) -> dict[str, bytes]:
        return {k: self.vectors[(fingerprint, k)] for k in keys if (fingerprint, k) in self.vectors}

    def store_embeddings(self, fingerprint: str, vectors: dict[str, bytes]) -> None:
        self.stored += len(vectors)
        self.vectors.update({(fingerprint, k): v for k, v in vectors.items()})


class Events:
    def __init__(self, cancel_at: str | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.fractions: list[float] = []
        self.cancel_at = cancel_at

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self.events.append((kind, data))

    def progress(self, fraction: float) -> None:
        self.fractions.append(fraction)

    def cancelled(self) -> bool:
        return self.cancel_at is not None and any(k == self.cancel_at for k, _ in self.events)


@pytest.fixture(scope="module")
def backbone(graft_home):
    return load_backbone("minilm-l6", graft_home, provider="cpu")


def test_examples_in_evaluated_version_out(backbone):
    cache, report = DictCache(), Events()
    out = train_version(TRAIN, backbone, {"epochs": 30, "seed": 1}, active=None, cache=cache, report=report,
                        promote_margin=0.01, job_id="j1")
    assert out.promote and out.baseline_version is None and "first trained version" in out.reason
    assert out.metrics["macro_f1"] > out.metrics["baselines"]["zero_shot"]["macro_f1"]
    assert [k for k, _ in report.events][:2] == ["validation", "split"] and report.events[-1][0] == "evaluation"
    assert report.fractions and max(report.fractions) <= 1.0
    adapter = decode(out.config.to_json(), out.weights, fingerprint=backbone.fingerprint, dim=backbone.dim)
    assert adapter.labels == sorted({e["label"] for e in TRAIN}) and out.config.training["job_id"] == "j1"
    assert cache.stored == len({e["text"] for e in TRAIN})

    # Against that version as the active one, the same data does not beat it by the margin:
    # the new version is a candidate, decided against version 7; the cache spares the backbone.
    active = decode(out.config.to_json(), out.weights, fingerprint=backbone.fingerprint, dim=backbone.dim, version=7)
    again = train_version(TRAIN, backbone, {"epochs": 30, "seed": 1}, active=active, cache=cache, report=Events(),
                          promote_margin=0.5)
    assert not again.promote and again.baseline_version == 7 and "candidate" in again.reason
    assert again.metrics["baselines"]["active"]["version"] == 7
    assert cache.stored == len({e["text"] for e in TRAIN})  # nothing embedded twice


def test_cancel_stops_the_pipeline(backbone):
    with pytest.raises(Cancelled):
        train_version(TRAIN, backbone, {"epochs": 50}, active=None, cache=DictCache(),
                      report=Events(cancel_at="epoch"), promote_margin=0.01)


def test_negative_transfer_guard():
    assert decide({"macro_f1": 0.8}, None, 0.01)[0]
    assert decide({"macro_f1": 0.8}, {"macro_f1": 0.7}, 0.05)[0]
    promote, reason = decide({"macro_f1": 0.72}, {"macro_f1": 0.7}, 0.05)
    assert not promote and "margin 0.05" in reason
