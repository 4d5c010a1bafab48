"""A version's model card: what it was trained on, how, how well, how calibrated, and why it
serves or not. Two halves:

- at training time (adapters/pipeline.py) `record` gathers what only the training job sees
  (data summary, epoch curves, per-group metrics, the candidates tried, the promotion
  decision) into `AdapterConfig.card`, stored and signed with the version;
- at read time `build` joins that with the version's metrics, training and backbone into the
  card (JSON) that GET …/versions/{v}/card answers; service/cards.py renders it as Markdown
  and PNG.

Versions trained before cards existed get a card with what their config holds, the rest null.
"""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from typing import Any

import numpy as np

from adapters.evaluation import evaluate
from adapters.format import AdapterConfig

CARD_VERSION = 1
CONFLICT_SAMPLES = 5  # label conflicts quoted in the card (the tenant's own texts, cut)
SAMPLE_CHARS = 80


def _stats(values: list[int]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": int(min(values)), "median": float(statistics.median(values)),
            "mean": round(float(statistics.fmean(values)), 2), "max": int(max(values))}


def data_summary(examples: list[dict[str, Any]], labels: list[str]) -> dict[str, Any]:
    """Examples per class, lengths (texts: characters and words; images: bytes of base64),
    exact duplicates (same item, same label, beyond the first) and label conflicts (the same
    item under two or more labels), per group when examples carry one."""
    field = "text" if examples and "text" in examples[0] else "image"
    per_class = Counter(e["label"] for e in examples)
    seen: dict[str, set[str]] = defaultdict(set)
    pairs: Counter[tuple[str, str]] = Counter()
    for e in examples:
        seen[e[field]].add(e["label"])
        pairs[(e[field], e["label"])] += 1
    conflicts = [(item, sorted(ls)) for item, ls in seen.items() if len(ls) > 1]
    items = [e[field] for e in examples]
    lengths: dict[str, Any]
    if field == "text":
        lengths = {"chars": _stats([len(t) for t in items]), "words": _stats([len(t.split()) for t in items])}
    else:
        lengths = {"base64_chars": _stats([len(t) for t in items])}
    groups = Counter(e["group"] for e in examples if e.get("group"))
    return {
        "examples": len(examples),
        "kind": field,
        "classes": len(labels),
        "per_class": {label: int(per_class.get(label, 0)) for label in labels},
        "lengths": lengths,
        "duplicates": int(sum(n - 1 for n in pairs.values() if n > 1)),
        "label_conflicts": {
            "items": len(conflicts),
            "examples": [{"item": item[:SAMPLE_CHARS] if field == "text" else f"<image, {len(item)} base64 chars>",
                          "labels": ls} for item, ls in conflicts[:CONFLICT_SAMPLES]],
        },
        "groups": dict(sorted(groups.items())) or None,
    }


def group_metrics(y_true: np.ndarray, y_pred: np.ndarray, groups: list[str | None],
                  labels: list[str]) -> dict[str, Any] | None:
    """Macro-F1 per group on the held-out rows (those with a group), and the largest gap
    between two groups: the bias check. None when no held-out row has a group."""
    by: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        if g:
            by[g].append(i)
    if not by:
        return None
    per = {}
    for g, rows in sorted(by.items()):
        m = evaluate(y_true[rows], y_pred[rows], labels)
        per[g] = {"macro_f1": round(m["macro_f1"], 6), "accuracy": round(m["accuracy"], 6), "n": len(rows)}
    order = sorted(per, key=lambda g: per[g]["macro_f1"])  # stable: ties stay in name order
    worst, best = order[0], order[-1]
    return {
        "split": "validation",
        "groups": per,
        "largest_gap": {"macro_f1": round(per[best]["macro_f1"] - per[worst]["macro_f1"], 6),
                        "best": best, "worst": worst} if len(per) > 1 else None,
    }


def label_changes(labels: list[str], active_labels: list[str] | None, active_version: int | None) -> dict[str, Any] | None:
    """Labels this version adds and drops against the active one (None: nothing serves)."""
    if active_labels is None:
        return None
    return {"active_version": active_version,
            "added": sorted(set(labels) - set(active_labels)),
            "dropped": sorted(set(active_labels) - set(labels))}


def record(*, data: dict[str, Any], curves: list[dict[str, Any]], groups: dict[str, Any] | None,
           candidates: list[dict[str, Any]], decision: dict[str, Any], licence: str) -> dict[str, Any]:
    """What the card needs that only the training job sees (stored as AdapterConfig.card)."""
    return {"card_version": CARD_VERSION, "data": data, "curves": curves, "groups": groups,
            "candidates": candidates, "decision": decision, "backbone_licence": licence}


def build(tenant: str, adapter: str, version: int, config: AdapterConfig, *, active: bool,
          created_at: str) -> dict[str, Any]:
    """The card of one stored version: every field present, null where the version predates it."""
    stored = config.card or {}
    metrics = config.metrics or {}
    training = config.training or {}
    evaluation = None
    if "macro_f1" in metrics:
        evaluation = {
            "split": metrics.get("split", "validation"), "n": metrics.get("n"),
            "accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"),
            "per_class_f1": {k: v.get("f1") for k, v in (metrics.get("per_class") or {}).items()},
            "per_class": metrics.get("per_class"),
            "confusion": metrics.get("confusion"),
        }
    decision = stored.get("decision")
    return {
        "card_version": CARD_VERSION,
        "tenant": tenant,
        "adapter": adapter,
        "version": version,
        "created_at": created_at,
        "active": active,
        "parent_version": config.parent_version,
        "backbone": {"id": config.backbone, "fingerprint": config.fingerprint, "dim": config.dim,
                     "licence": stored.get("backbone_licence")},
        "labels": list(config.labels),
        "data": stored.get("data"),
        "method": {
            "name": config.method if training.get("method") not in ("zero-shot",) else "zero-shot",
            "head": config.head,
            "params": training.get("params"),
            "lora": config.lora,
            "unfreeze": config.unfreeze,
            "job_id": training.get("job_id"),
            "examples": training.get("examples"), "train": training.get("train"),
            "validation": training.get("validation"),
            "epochs_run": training.get("epochs_run"), "best_epoch": training.get("best_epoch"),
            "continual_from": training.get("continual_from"),
        },
        "evaluation": evaluation,
        # Method auto (adapters/auto.py) evaluates the chosen candidate once on its test split;
        # single methods and small sets have none (the evaluation is then on validation).
        "test": ({"split": "test", "n": metrics.get("n"), "accuracy": metrics.get("accuracy"),
                  "macro_f1": metrics.get("macro_f1"), "validation_macro_f1": (metrics.get("validation") or {}).get("macro_f1")}
                 if metrics.get("split") == "test" else None),
        "calibration": metrics.get("calibration") or {"method": "none", "temperature": config.temperature,
                                                      "ece_before": None, "ece_after": None},
        "baselines": metrics.get("baselines"),
        "label_changes": metrics.get("label_changes"),
        "promotion": {**(decision or {"decision": None, "reason": None}), "active_now": active},
        "candidates": stored.get("candidates") or [],
        "curves": stored.get("curves") or [],
        "groups": stored.get("groups"),
    }
