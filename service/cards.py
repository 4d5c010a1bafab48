"""A model card (adapters/card.py builds it) rendered for people: Markdown, and a PNG of the
confusion-matrix heatmap beside the train/validation curves (matplotlib, Agg, its
object-oriented API: no pyplot state, so concurrent renders in threads do not mix).
Presentation only: every number comes from the card.
"""
from __future__ import annotations

import base64
import io
from typing import Any


def png(card: dict[str, Any]) -> bytes:
    """Left: the validation confusion matrix as a heatmap (counts in the cells); right: train
    and validation loss per epoch, validation macro-F1 on a second axis. A panel whose data
    the version lacks (a zero-shot version) says so instead."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.25]})
    confusion = (card.get("evaluation") or {}).get("confusion")
    if confusion and confusion.get("matrix"):
        labels, matrix = confusion["labels"], confusion["matrix"]
        image = left.imshow(matrix, cmap="Blues")
        fig.colorbar(image, ax=left, fraction=0.046, pad=0.04)
        ticks = range(len(labels))
        left.set_xticks(list(ticks), [_short(l) for l in labels], rotation=45, ha="right", fontsize=8)
        left.set_yticks(list(ticks), [_short(l) for l in labels], fontsize=8)
        top = max((max(row) for row in matrix), default=0)
        if len(labels) <= 20:
            for i, row in enumerate(matrix):
                for j, n in enumerate(row):
                    left.text(j, i, str(n), ha="center", va="center", fontsize=8,
                              color="white" if top and n > top / 2 else "black")
        left.set_xlabel("predicted")
        left.set_ylabel("true")
        left.set_title(f"confusion matrix (validation, n={sum(map(sum, matrix))})", fontsize=10)
    else:
        _empty(left, "no evaluation recorded for this version")
    curves = card.get("curves") or []
    if curves:
        epochs = [c["epoch"] for c in curves]
        right.plot(epochs, [c["train_loss"] for c in curves], label="train loss", color="tab:blue")
        right.plot(epochs, [c["val_loss"] for c in curves], label="validation loss", color="tab:orange")
        right.set_xlabel("epoch")
        right.set_ylabel("loss")
        f1 = right.twinx()
        f1.plot(epochs, [c["val_macro_f1"] for c in curves], label="validation macro-F1", color="tab:green",
                linestyle="--")
        f1.set_ylabel("macro-F1")
        f1.set_ylim(0, 1.02)
        best = (card.get("method") or {}).get("best_epoch")
        if best:
            right.axvline(best, color="grey", linewidth=0.8, linestyle=":", label=f"kept: epoch {best}")
        handles = right.get_legend_handles_labels()
        more = f1.get_legend_handles_labels()
        right.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="best", framealpha=0.8)
        right.xaxis.get_major_locator().set_params(integer=True)
        right.set_title("training curves", fontsize=10)
    else:
        _empty(right, "no training curves (a version made without a fine-tune job)")
    name = f"{card['tenant']}/{card['adapter']} v{card['version']}"
    fig.suptitle(f"{name} · {(card.get('method') or {}).get('name')} on {card['backbone']['id']}", fontsize=11)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", bbox_inches="tight")
    return out.getvalue()


def _short(label: str, n: int = 18) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def _empty(ax: Any, text: str) -> None:
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, wrap=True)


def _f(x: Any, digits: int = 4) -> str:
    return "—" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def markdown(card: dict[str, Any], image: bytes | None = None) -> str:
    """The card as Markdown, its figures embedded as a data: URL (the document stands alone:
    no second authenticated request for the picture)."""
    b, m, ev, cal = card["backbone"], card.get("method") or {}, card.get("evaluation"), card.get("calibration") or {}
    promotion, data = card.get("promotion") or {}, card.get("data")
    lines = [f"# Model card: {card['tenant']}/{card['adapter']} version {card['version']}", "",
             f"- created: {card['created_at']}; serving now: {'yes' if card['active'] else 'no'}"
             + (f"; parent version: {card['parent_version']}" if card.get("parent_version") else ""),
             f"- backbone: `{b['id']}` (fingerprint `{b['fingerprint']}`, {b.get('dim')}-d), "
             f"licence: {b.get('licence') or 'unknown'}",
             f"- labels: {', '.join(_cell(l) for l in card['labels'])}", ""]
    if image is not None:
        lines += ["![confusion matrix and training curves](data:image/png;base64,"
                  + base64.b64encode(image).decode() + ")", ""]
    lines += ["## Data", ""]
    if data:
        lines += [f"{data['examples']} examples ({data['kind']}), {data['classes']} classes; "
                  f"{data['duplicates']} exact duplicates; {data['label_conflicts']['items']} items with "
                  "conflicting labels.", "", "| class | examples |", "|---|---|"]
        lines += [f"| {_cell(k)} | {v} |" for k, v in data["per_class"].items()]
        for name, st in (data.get("lengths") or {}).items():
            if st:
                lines.append(f"\nLength ({name}): min {st['min']}, median {st['median']}, mean {st['mean']}, "
                             f"max {st['max']}.")
        if data["label_conflicts"]["examples"]:
            lines.append("")
        for c in data["label_conflicts"]["examples"]:
            lines.append(f"- conflict: “{_cell(c['item'])}” labelled {', '.join(map(_cell, c['labels']))}")
        if data.get("groups"):
            lines.append("\nExamples per group: " + ", ".join(f"{_cell(g)} {n}" for g, n in data["groups"].items()))
    else:
        lines.append("Not recorded (a version made without a fine-tune job, or before model cards).")
    lines += ["", "## Method", "", f"- method: **{m.get('name')}**, head {m.get('head')}"]
    for key in ("lora", "unfreeze"):
        if m.get(key):
            lines.append(f"- {key}: `{m[key]}`")
    if m.get("params"):
        lines.append("- parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(m["params"].items())))
    if m.get("examples") is not None:
        lines.append(f"- examples {m['examples']}: train {m.get('train')}, validation {m.get('validation')}; "
                     f"epochs run {m.get('epochs_run')}, best {m.get('best_epoch')}")
    lines += ["", "### Candidates", "", "| method | head | score | metric | seconds | chosen |", "|---|---|---|---|---|---|"]
    lines += [f"| {_cell(c.get('candidate') or c.get('method'))} | {c.get('head') or ''} | {_f(c.get('score'))} | "
              f"{c.get('metric') or ''} | {_f(c.get('seconds'), 2)} | "
              f"{'yes' if c.get('chosen') else _cell('skipped: ' + c['skipped']) if c.get('skipped') else ''} |"
              for c in card.get("candidates") or []]
    lines += ["", "## Evaluation", ""]
    if ev:
        lines += [f"On the {ev['split']} split (n={ev['n']}): macro-F1 {_f(ev['macro_f1'])}, "
                  f"accuracy {_f(ev['accuracy'])}.", "", "| class | precision | recall | F1 | support |",
                  "|---|---|---|---|---|"]
        lines += [f"| {_cell(k)} | {_f(v['precision'])} | {_f(v['recall'])} | {_f(v['f1'])} | {v['support']} |"
                  for k, v in (ev.get("per_class") or {}).items()]
        conf = ev.get("confusion") or {}
        if conf.get("labels"):
            lines += ["", "Confusion matrix (rows: true, columns: predicted):", "",
                      "| | " + " | ".join(map(_cell, conf["labels"])) + " |",
                      "|---" * (len(conf["labels"]) + 1) + "|"]
            lines += [f"| **{_cell(label)}** | " + " | ".join(map(str, row)) + " |"
                      for label, row in zip(conf["labels"], conf["matrix"])]
    else:
        lines.append("No evaluation recorded.")
    if card.get("baselines"):
        lines += ["", "Baselines on the same split:", ""]
        lines += [f"- {k}: macro-F1 {_f(v.get('macro_f1'))}" + (f" (version {v['version']})" if "version" in v else "")
                  for k, v in card["baselines"].items()]
    lines += ["", "## Calibration", "",
              f"Temperature scaling: T = {_f(cal.get('temperature'))}; expected calibration error "
              f"({cal.get('bins', 15)} bins) {_f(cal.get('ece_before'))} before, {_f(cal.get('ece_after'))} after."]
    g = card.get("groups")
    lines += ["", "## Groups", ""]
    if g:
        lines += ["| group | macro-F1 | accuracy | n |", "|---|---|---|---|"]
        lines += [f"| {_cell(k)} | {_f(v['macro_f1'])} | {_f(v['accuracy'])} | {v['n']} |" for k, v in g["groups"].items()]
        if g.get("largest_gap"):
            gap = g["largest_gap"]
            lines.append(f"\nLargest gap: {_f(gap['macro_f1'])} macro-F1 between {_cell(gap['best'])} and "
                         f"{_cell(gap['worst'])}.")
    else:
        lines.append("The examples carried no `group`.")
    changes = card.get("label_changes")
    lines += ["", "## Promotion", ""]
    if changes and (changes["added"] or changes["dropped"]):
        lines.append(f"Against active version {changes['active_version']}: labels added {changes['added'] or 'none'}, "
                     f"dropped {changes['dropped'] or 'none'}.\n")
    lines.append(f"Decision: **{promotion.get('decision') or 'not recorded'}**"
                 + (f": {_cell(promotion['reason'])}" if promotion.get("reason") else "") + ".")
    return "\n".join(lines) + "\n"
