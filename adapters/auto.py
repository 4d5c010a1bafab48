"""AutoTL (`params.method: "auto"`, the default): the service tries the adaptations that fit
the tenant's data and time budget, keeps the one that wins on held-out data, and says why.

Honest selection. The examples are split once, stratified, into train / validation / test
(`split`). Every candidate trains on train; early stopping, the choice between candidates
and the temperature see the validation split only. The test split is opened once, after
the choice: the chosen candidate's evaluation, the baselines and the promotion guard
against the active version (evaluated on the same test rows) are all measured there, so
the guard no longer favours the new version for having been tuned on the split it is
judged on. Sets too small for three splits (a class with fewer than `MIN_TEST_PER_CLASS`
examples) are split train / validation only: selection and the guard then share the
validation split, and the metrics and card say so (`split: "validation"`, `test_note`).

Few-shot text sets (a class with at most FEWSHOT_MAX_PER_CLASS examples) are compared by
cross-validation, not by the validation split alone (`folds`): at 8 a class the validation
split holds 4 rows, and one row moves a score there by 25 points. The validation split is
the first fold; the training rows are dealt, stratified, into up to CV_FOLDS - 1 more of
about its size; each candidate trains once per fold (on the other rows), and its macro-F1
over every out-of-fold prediction (all of train + validation) is its score. Sixteen rows
cannot rank candidates a few points apart, so the choice starts from a default measured
elsewhere (`FEWSHOT_PRIOR`, setfit) and moves only on evidence (`choose`: a one-sided sign
test on the rows where two candidates disagree). The chosen one is then refit on train +
validation (`REFIT`; heads for the epoch count early stopping kept): on 8 reviews a class
that lifted every candidate by 1-3 points (BENCHMARKS). Its temperature is fitted on the
out-of-fold logits; it is evaluated and guarded on the test split when there is one, else on
the out-of-fold predictions (`split: "cross-validation"`). The test split is in no fold.

Candidates, cheap first (`plan`): text backbones: a linear head on the frozen vectors,
zero-shot (the label names embedded by the backbone: a head that learns nothing from the
examples, scored like the others; CLIP-style image backbones too, through their text tower),
lexical (TF-IDF n-grams from scratch), hybrid (n-grams and the vector), setfit (few-shot
contrastive LoRA, adapters/fewshot.py) when the backbone is split and a class has at most
FEWSHOT_MAX_PER_CLASS examples, LoRA on the top
layers when the backbone is split (GRAFT_SPLIT_LAYERS > 0) and the set has
`LORA_MIN_EXAMPLES` or more examples, then lora-hybrid (the hybrid recipe on the vectors
LoRA's factors give: no encoder training of its own, a few seconds), and last an MLP head
from `MLP_MIN_EXAMPLES` (its early-stopped validation score was optimistic on reviews);
image backbones: a head, a head on augmented copies,
and unfreeze when the image backbone is split. `params.time_budget_s` bounds the job: a
candidate whose estimated time (`estimate`: examples x a measured rate, scaled by how fast
this machine ran the candidates so far, median) would end past the budget is skipped and said so;
the first candidate always runs, and one that runs past the budget is stopped at its next
epoch and dropped (so the budget holds to about one epoch). Larger text sets refit only the
linear head when it wins (`VALIDATION_REFIT`: measured to help; the others did not), for the
epoch count and with the temperature the validation split gave it; the rest serve as trained
on train.

Events: `candidate` (each one tried: validation, or cross-validated, macro-F1; seconds),
`candidate_skipped`,
`chosen` (which and why), `refit` (cross-validation); then the usual `calibration` and
`evaluation` (with its split).
The model card's `candidates` lists every candidate, tried or skipped.
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

import numpy as np

from adapters import calibration, zero_shot
from adapters import card as cards
from adapters.evaluation import evaluate, stratified_split
from adapters.fewshot import FEWSHOT_MAX_PER_CLASS
from adapters.format import Adapter, AdapterConfig, deep_tensors, encode
from adapters.lexical import LexicalParams, train_lexical
from adapters.training import Cancelled, EpochReport, TrainParams, continual_init, train_head

DEFAULT_BUDGET_S = 120.0
MIN_TEST_PER_CLASS = 10  # fewer in a class: no test split (train / validation only)
TEST_FRACTION = 0.2
# LoRA is tried from this many examples on: below it, on Rotten Tomatoes, LoRA did not beat
# the cheap candidates on validation (docs/BENCHMARKS.md, AutoTL) and costs ~10x their time.
LORA_MIN_EXAMPLES = 400
# The MLP head's validation score is the best of up to 100 early-stopping epochs: on 400 and
# 1,000 reviews it led validation by 1-3 points and trailed on test by 3-6 (won the choice,
# lost 2.8 points: BENCHMARKS, AutoTL). Kept for large sets only, where that was not measured.
MLP_MIN_EXAMPLES = 5000
# Few-shot sets (text, a class with at most FEWSHOT_MAX_PER_CLASS examples) are compared by
# cross-validation over train + validation in at most this many folds (`folds`).
CV_FOLDS = 5
IMAGE_AUGMENT = 2  # copies per training image for the "head, augmented" candidate (unless params.augment)
# Seconds per 1,000 training examples of each candidate on the reference machine (2 cores,
# AVX-512; bench_deep, bench_lexical, bench_autotl), and a fixed part. LoRA and unfreeze
# include computing the lower graph's hidden states.
RATE_S = {"head": 3.0, "head-mlp": 14.0, "lexical": 1.5, "hybrid": 1.5, "lora": 60.0,
          "lora-hybrid": 4.0, "head-augmented": 25.0, "unfreeze": 80.0, "setfit": 400.0, "zero-shot": 0.0}
FIXED_S = 0.5


@dataclass
class Candidate:
    """One trained candidate: its validation score, and what it needs to become a version."""

    name: str
    method: str  # AdapterConfig.method
    head: str
    score: float  # validation macro-F1
    seconds: float
    val_logits: np.ndarray
    tensors: dict[str, np.ndarray]
    logits: Callable[[np.ndarray], np.ndarray]  # example rows (indices) -> logits, as it will serve
    config: dict[str, Any] = field(default_factory=dict)  # extra AdapterConfig fields (lexical, lora, ...)
    training: dict[str, Any] = field(default_factory=dict)
    curves: list[dict[str, Any]] = field(default_factory=list)
    oof: np.ndarray | None = None  # cross-validation: out-of-fold logits, rows as the examples (others 0)
    refit: Callable[[], "Candidate"] | None = None  # cross-validation: the same, trained on train + validation


def split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Train, validation and test indices, stratified; test None when a class has fewer than
    MIN_TEST_PER_CLASS examples (then train / validation as the single methods split)."""
    if np.bincount(y).min() < MIN_TEST_PER_CLASS:
        train, val = stratified_split(y, val_fraction, seed)
        return train, val, None
    rest, test = stratified_split(y, TEST_FRACTION, seed)
    tr, va = stratified_split(y[rest], val_fraction / (1 - TEST_FRACTION), seed + 1)
    return np.sort(rest[tr]), np.sort(rest[va]), test


def plan(kind: str, split_shape: Any, n: int, params: dict[str, Any], smallest: int | None = None,
         zero_shot: bool = False) -> list[str]:
    """The candidates for this backbone and set (`smallest`: examples of its smallest class;
    `zero_shot`: the backbone embeds label names: text, or a CLIP-style text tower), cheap first."""
    first = ["head"] + (["zero-shot"] if zero_shot else [])
    if kind == "image":
        return first + ["head-augmented"] + (["unfreeze"] if split_shape is not None else [])
    names = first + ["lexical", "hybrid"]
    if split_shape is not None and smallest is not None and smallest <= FEWSHOT_MAX_PER_CLASS:
        names.append("setfit")
    if split_shape is not None and n >= LORA_MIN_EXAMPLES:
        names += ["lora", "lora-hybrid"]
    # Last, and for large sets only (MLP_MIN_EXAMPLES).
    return names + (["head-mlp"] if n >= MLP_MIN_EXAMPLES else [])


def folds(y: np.ndarray, train: np.ndarray, val: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Cross-validation folds over train + validation for few-shot sets: (train, held-out)
    index pairs, the first being (train, val) itself; the training rows dealt, class by
    class, into as many more held-out folds of about the validation split's size as fit,
    CV_FOLDS in all at most. Every row of train + validation is held out exactly once."""
    extra = int(np.clip(round(len(train) / max(1, len(val))), 1, CV_FOLDS - 1))
    rng = np.random.default_rng(seed + 2)
    parts: list[list[int]] = [[] for _ in range(extra)]
    start = 0
    for c in np.unique(y[train]):
        rows = rng.permutation(train[y[train] == c])
        for j, i in enumerate(rows):
            parts[(start + j) % extra].append(int(i))
        start += len(rows)  # the next class starts where this one stopped: folds stay even
    out = [(train, val)]
    for part in parts:
        held = np.sort(np.array(part, dtype=np.int64))
        out.append((np.setdiff1d(np.concatenate([train, val]), held), held))
    return out


def estimate(name: str, n_train: int, speed: float) -> float:
    """Seconds the candidate should take here: the reference rate x examples x this machine's speed."""
    return (FIXED_S + RATE_S[name] * n_train / 1000) * speed


class _Job:
    """What every candidate reads: the examples, their vectors, the splits."""

    def __init__(self, backbone: Any, params: dict[str, Any], keys: list[str], x: np.ndarray, y: np.ndarray,
                 labels: list[str], train: np.ndarray, val: np.ndarray, report: Any, cache: Any,
                 where: dict[str, str], init: dict[str, np.ndarray] | None, init_head: str | None,
                 max_unfreeze_bytes: int | None) -> None:
        self.backbone, self.params, self.keys, self.x, self.y, self.labels = backbone, params, keys, x, y, labels
        self.train, self.val, self.report, self.cache, self.where = train, val, report, cache, where
        self.init, self.init_head, self.max_unfreeze_bytes = init, init_head, max_unfreeze_bytes
        self.deadline = float("inf")  # the first candidate always finishes; then the job's budget
        self.fold = 0  # cross-validation: which fold this copy trains (0: train / validation itself)
        self.zero_shot: dict[str, np.ndarray] = {}  # the label names' head (train_auto sets it)
        self.refit_epochs: int | None = None  # a refit: train this many epochs, no early stopping
        self.trained: dict[str, Candidate] = {}  # the candidates trained so far, in order (lora-hybrid reads lora's)

    def texts(self, rows: np.ndarray) -> list[str]:
        return [self.keys[i] for i in rows]

    def on_epoch(self, name: str, curves: list[dict[str, Any]]) -> Callable[[EpochReport], bool]:
        def on_epoch(r: EpochReport) -> bool:
            point = {"epoch": r.epoch, "train_loss": round(r.train_loss, 5), "val_loss": round(r.val_loss, 5),
                     "val_macro_f1": round(r.val_macro_f1, 4)}
            curves.append(point)
            self.report.event("epoch", {**point, "candidate": name, **({"fold": self.fold} if self.fold else {})})
            # Past the budget, a candidate stops at its epoch's end (train_auto drops it).
            return self.report.cancelled() or time.perf_counter() > self.deadline
        return on_epoch


def _head(job: _Job, name: str) -> Candidate:
    from adapters.pipeline import TRAIN_FIELDS, augmented

    b = job.backbone
    settings = {k: v for k, v in job.params.items() if v is not None and k in TRAIN_FIELDS}
    head = "mlp" if name == "head-mlp" else "linear"
    copies = int(job.params.get("augment") or IMAGE_AUGMENT) if name == "head-augmented" else 0
    p = TrainParams(**{"standardize": b.kind == "image", **settings, "head": head, "augment": copies})
    x_train, y_train = job.x[job.train], job.y[job.train]
    if copies:
        x_aug, y_aug = augmented(b, job.texts(job.train), y_train, p, job.report)
        x_train, y_train = np.concatenate([x_train, x_aug]), np.concatenate([y_train, y_aug])
        job.report.event("augmentation", {"copies": copies, "train": len(y_train), "candidate": name})
    curves: list[dict[str, Any]] = []
    init = job.init if job.init_head == head else None
    if job.refit_epochs is not None:  # the epoch count early stopping found, on train + validation
        p = replace(p, epochs=max(1, job.refit_epochs))
    trained = train_head(x_train, y_train, job.x[job.val], job.y[job.val], job.labels, p, init=init,
                         on_epoch=job.on_epoch(name, curves), keep_last=job.refit_epochs is not None)
    probe = Adapter(AdapterConfig(backbone="", fingerprint="", dim=b.dim, head=head, labels=job.labels),
                    trained.tensors)
    return Candidate(name, "head", head, 0.0, 0.0, probe.logits(job.x[job.val]), trained.tensors,
                     lambda rows: probe.logits(job.x[rows]),
                     training={"params": p.as_dict(), "epochs_run": trained.epochs_run,
                               "best_epoch": trained.best_epoch,
                               "continual_from": "active" if init is not None else None},
                     curves=curves)


def _zero_shot(job: _Job, name: str) -> Candidate:
    """The label names embedded (`job.zero_shot`: adapters/zero_shot.py's head): nothing is
    trained, the same head in every fold; it wins where the examples teach less than the names."""
    tensors = {k: v.copy() for k, v in job.zero_shot.items()}
    probe = Adapter(AdapterConfig(backbone="", fingerprint="", dim=job.backbone.dim, head="linear",
                                  labels=job.labels), tensors)
    return Candidate(name, "head", "linear", 0.0, 0.0, probe.logits(job.x[job.val]), tensors,
                     lambda rows: probe.logits(job.x[rows]),
                     training={"zero_shot": {"texts": list(job.labels), "scale": zero_shot.SCALE}})


def _lexical(job: _Job, name: str) -> Candidate:
    b = job.backbone
    trained = train_lexical(name, job.texts(job.train), job.y[job.train], job.labels,
                            LexicalParams(seed=int(job.params.get("seed") or 0)),
                            embeddings=job.x[job.train] if name == "hybrid" else None, report=job.report.event)
    tensors = trained.model.tensors()
    probe = Adapter(AdapterConfig(backbone="", fingerprint="", dim=b.dim, head="linear", labels=job.labels,
                                  method=name, lexical=trained.settings), tensors)  # as it will serve
    logits = lambda rows: probe.logits(job.x[rows], job.texts(rows))  # noqa: E731
    return Candidate(name, name, "linear", 0.0, 0.0, logits(job.val), tensors, logits,
                     config={"method": name, "lexical": trained.settings}, training=dict(trained.summary))


def deep_vectors(backbone: Any, items: list[Any], deep: Any, chunk: int = 256) -> np.ndarray:
    """The vectors the split graphs serve for these items under one adapter's deep weights."""
    if not items:
        return np.zeros((0, backbone.dim), np.float32)
    return np.concatenate([backbone.embed_deep(items[i : i + chunk], [deep] * len(items[i : i + chunk])).vectors
                           for i in range(0, len(items), chunk)])


def hybrid_on_lora(backbone: Any, lora: dict[str, Any], factors: dict[str, np.ndarray], texts: list[str],
                   y: np.ndarray, labels: list[str], seed: int = 0,
                   report: Callable[[str, dict[str, Any]], None] = lambda kind, data: None) -> Adapter:
    """The hybrid recipe (n-grams and the vector, one linear model) trained on the vectors that
    LoRA factors (`lora`: their AdapterConfig.lora settings) give these texts, as the split
    graphs serve them: the version's config fields and tensors, as an unsealed Adapter (the
    factors unchanged beside the hybrid head; its stored size within the lexical bound)."""
    from adapters.lexical import MAX_BYTES

    factors = {k: v for k, v in factors.items() if k.startswith(("lora_a.", "lora_b."))}
    deep = Adapter(AdapterConfig(backbone="", fingerprint="", dim=backbone.dim, head="linear", labels=labels,
                                 method="lora", lora=lora), factors).deep
    trained = train_lexical("hybrid", texts, y, labels,
                            LexicalParams(seed=seed, max_bytes=MAX_BYTES - sum(v.size * 4 for v in factors.values())),
                            embeddings=deep_vectors(backbone, texts, deep), report=report)
    config = AdapterConfig(backbone="", fingerprint="", dim=backbone.dim, head="linear", labels=labels,
                           method="hybrid", lexical=trained.settings, lora=lora, training=dict(trained.summary))
    return Adapter(config, {**trained.model.tensors(), **factors})


def _lora_hybrid(job: _Job, name: str) -> Candidate:
    """hybrid_on_lora on the lora candidate's factors: LoRA adapts the encoder to the task and
    the n-grams add the words it blurs; nothing new trains in the encoder."""
    from adapters.pipeline import _items

    lora = job.trained.get("lora")
    if lora is None:
        raise ValueError("lora-hybrid reads the lora candidate's vectors, and lora did not train")
    b = job.backbone
    probe = hybrid_on_lora(b, lora.config["lora"], lora.tensors, job.texts(job.train), job.y[job.train], job.labels,
                           seed=int(job.params.get("seed") or 0), report=job.report.event)

    def logits(rows: np.ndarray) -> np.ndarray:  # as it will serve
        return probe.logits(deep_vectors(b, _items(b, job.texts(rows), job.where), probe.deep), job.texts(rows))

    config = {"method": "hybrid", "lexical": probe.config.lexical, "lora": probe.config.lora}
    return Candidate(name, "hybrid", "linear", 0.0, 0.0, logits(job.val), probe.tensors, logits, config=config,
                     training={**probe.config.training, "lora": lora.training}, curves=lora.curves)


def _deep_candidate(job: _Job, name: str) -> Candidate:
    """LoRA or setfit (text: a LoRA version either way) or unfreeze (images) on the split
    backbone's hidden states, as adapters/pipeline.py `_train_deep` trains them, evaluated
    through the serving graphs."""
    from adapters.deep import UnfreezeParams, train_lora, train_unfreeze
    from adapters.fewshot import train_setfit
    from adapters.pipeline import _items, hidden_cached, lora_params, setfit_params, unfreeze_params
    from models.split import TARGET_NAMES

    b, shape = job.backbone, job.backbone.split_shape
    p: Any
    if name == "unfreeze":
        p = unfreeze_params(job.params, shape, job.max_unfreeze_bytes)
    elif name == "lora":
        p = lora_params(job.params, shape)
    else:  # its own recipe: the job's loop knobs (epochs, lr, ...) are the head's; lora_* and seed apply
        p = setfit_params({k: v for k, v in job.params.items() if k.startswith("lora_") or k == "seed"}, shape)
    rows = np.concatenate([job.train, job.val])
    states, _ = hidden_cached(b, job.texts(rows), job.cache, job.report, where=job.where)
    by_row = dict(zip(rows.tolist(), states))
    h_train, h_val = [by_row[i] for i in job.train], [by_row[i] for i in job.val]
    curves: list[dict[str, Any]] = []
    on_epoch = job.on_epoch(name, curves)
    if name == "setfit":  # one long epoch: the budget and a cancel are checked every step too
        trained = train_setfit(b.upper_module(), shape, h_train, job.y[job.train], h_val, job.y[job.val],
                               job.labels, p, on_epoch=on_epoch,
                               stop=lambda: job.report.cancelled() or time.perf_counter() > job.deadline)
    else:
        fit = train_lora if name == "lora" else train_unfreeze
        trained = fit(b.upper_module(), shape, h_train, job.y[job.train], h_val, job.y[job.val], job.labels, p,
                      on_epoch=on_epoch)
    probe = Adapter(AdapterConfig(backbone="", fingerprint="", dim=b.dim, head="linear", labels=job.labels),
                    trained.head)

    def logits(rows: np.ndarray) -> np.ndarray:  # through the serving upper graph
        items = _items(b, job.texts(rows), job.where)
        return probe.logits(deep_vectors(b, items, trained.weights))

    if not isinstance(p, UnfreezeParams):
        recipe = {"rank": p.rank, "alpha": p.alpha, "layers": p.layers, "split": shape.split,
                  "targets": [n for n, t in TARGET_NAMES.items() if t in p.targets]}
        config = {"method": "lora", "lora": recipe}
    else:
        recipe = shape.unfreeze_recipe(p.layers)
        config = {"method": "unfreeze", "unfreeze": recipe}
    targets = {"targets": recipe["targets"]} if "targets" in recipe else {}
    return Candidate(name, config["method"], "linear", 0.0, 0.0, logits(job.val),
                     {**trained.head, **deep_tensors(trained.weights)}, logits, config=config,
                     training={"params": {**asdict(p), **targets},
                               "epochs_run": trained.epochs_run, "best_epoch": trained.best_epoch},
                     curves=curves)


# Candidates that can be refit on train + validation after cross-validation chose them: nothing
# of theirs needs a held-out split (the head trains the epoch count early stopping found).
# LoRA's loop keeps its best validation epoch's factors; it is served as trained on train.
REFIT = {"head", "head-mlp", "zero-shot", "lexical", "hybrid", "setfit"}
# Cross-validation over a few-shot set keeps this candidate unless another beats it beyond
# chance (`choose`): on reviews no bench scores, 8 a class, it beat a logistic regression on the
# frozen vectors of all 16 by 0.7 point on average over 8 draws (2.8 over the first 4), and
# the head candidate by more (docs/BENCHMARKS.md, setfit), while 16 out-of-fold rows ranked it
# against the head no better than a coin (0.50-0.81 against 0.68-0.81 where the 1,000 test
# reviews put it ahead on every draw).
FEWSHOT_PRIOR = "setfit"
# Larger text sets (a validation split): the linear head, chosen, is refit on train + validation
# for the epoch count early stopping kept; on Rotten Tomatoes that gained 0.9 / 2.0 / 2.0 points
# at 2,000 / 1,000 / 400 examples, while lexical and hybrid refits moved -1.9 to +1.0 (kept as
# trained; docs/BENCHMARKS.md, AutoTL). Its temperature stays the one fitted on validation.
VALIDATION_REFIT = {"head"}
SIGNIFICANCE = 0.05  # one-sided sign test on the rows where two candidates disagree


def job_epochs(c: Candidate) -> int | None:
    """The epoch count early stopping kept, for candidates that early-stop on validation (heads)."""
    return c.training.get("best_epoch") if c.method == "head" and "params" in c.training else None


def _refitter(job: _Job, c: Candidate, rows: np.ndarray) -> Callable[[], Candidate]:
    """Train c again on `rows` (train + validation), as it trained on train; the rows are also
    its report-only validation set (no early stopping: heads train the epochs they kept)."""
    def refit() -> Candidate:
        again = copy.copy(job)
        again.train, again.val, again.refit_epochs = rows, rows, job_epochs(c)
        again.deadline = float("inf")
        return TRAINERS[c.name](again, c.name)
    return refit


def choose_on_validation(tried: list[Candidate], n: int, metric: str) -> tuple[Candidate, str]:
    """The highest validation score; a later (costlier) candidate must win by more than one
    validation row's worth: closer than that, the split cannot tell them apart and the cheaper stays."""
    tolerance = 1.0 / max(1, n)
    best = tried[0]
    for c in tried[1:]:
        if c.score > best.score + tolerance:
            best = c
    runner_up = max((c for c in tried if c is not best), key=lambda c: c.score, default=None)
    why = (f"highest {metric} ({best.score:.4f}) of {len(tried)} candidates tried"
           + (f"; next: {runner_up.name} {runner_up.score:.4f}" if runner_up else "")
           + (f"; within {tolerance:.4f} (one held-out row) the cheaper candidate is kept"
              if runner_up and abs(runner_up.score - best.score) <= tolerance else ""))
    return best, why


def sign_test(wins: int, losses: int) -> float:
    """One-sided p-value that `wins` of the `wins + losses` rows where two candidates disagree
    favour the challenger by chance (exact binomial, p = 1/2)."""
    from scipy.stats import binomtest

    return float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue) if wins + losses else 1.0


def choose(tried: list[Candidate], y: np.ndarray, rows: np.ndarray, metric: str) -> tuple[Candidate, str]:
    """Cross-validated choice for few-shot sets: FEWSHOT_PRIOR (else the first candidate) is
    kept unless another candidate scores higher and is right on more of the rows where the two
    disagree than chance allows (one-sided sign test at SIGNIFICANCE, out-of-fold predictions).
    At 16 rows a score moves 6 points a row: only a difference the rows can show replaces it."""
    best = next((c for c in tried if c.name == FEWSHOT_PRIOR), tried[0])
    prior, evidence = best, ""
    for c in tried:
        if c is best or c.score <= best.score:
            continue
        right_c = c.oof[rows].argmax(1) == y[rows]
        right_b = best.oof[rows].argmax(1) == y[rows]
        wins, losses = int((right_c & ~right_b).sum()), int((right_b & ~right_c).sum())
        p = sign_test(wins, losses)
        if p < SIGNIFICANCE:
            evidence = f"; it beat {best.name} on {wins} of the {wins + losses} rows where they disagree (p {p:.3f})"
            best = c
    runner_up = max((c for c in tried if c is not best), key=lambda c: c.score, default=None)
    why = (f"{metric}: {best.name} {best.score:.4f}" + evidence
           + (f"; next: {runner_up.name} {runner_up.score:.4f}" if runner_up else "")
           + (f"; {prior.name} (the few-shot default) is kept unless another candidate beats it beyond chance "
              f"(one-sided sign test, p < {SIGNIFICANCE:g}, on the out-of-fold rows)" if best is prior else ""))
    return best, why


TRAINERS: dict[str, Callable[[_Job, str], Candidate]] = {
    "head": _head, "head-mlp": _head, "head-augmented": _head, "lexical": _lexical, "hybrid": _lexical,
    "lora": _deep_candidate, "unfreeze": _deep_candidate, "setfit": _deep_candidate, "zero-shot": _zero_shot,
    "lora-hybrid": _lora_hybrid,
}


def train_auto(examples: list[dict[str, str]], backbone: Any, params: dict[str, Any], *, active: Adapter | None,
               cache: Any, report: Any, promote_margin: float, job_id: str = "",
               max_unfreeze_bytes: int | None = None,
               on_candidate: Callable[[Candidate], None] | None = None) -> Any:
    """Train every candidate that fits the budget, choose on validation, evaluate the choice
    once on test, and return the pipeline's Outcome. `on_candidate` sees each trained
    candidate (the bench evaluates them all on its own test reviews)."""
    from adapters.pipeline import InvalidParams, Outcome, _predict, embed_cached, read_examples, reference_head

    started = time.perf_counter()
    budget = float(params.get("time_budget_s") or DEFAULT_BUDGET_S)
    seed = int(params.get("seed") or 0)
    val_fraction = float(params.get("val_fraction") or 0.2)
    keys, labels, y, data, where = read_examples(examples, report)
    train, val, test = split(y, val_fraction, seed)
    smallest = int(np.bincount(y).min())
    # Few-shot text sets: a validation split of a few rows cannot tell candidates apart (8 a
    # class: 4 rows), so they are compared by cross-validation over train + validation.
    cv = folds(y, train, val, seed) if backbone.kind == "text" and smallest <= FEWSHOT_MAX_PER_CLASS else [(train, val)]
    note = None if test is not None else (
        f"no test split: a class has fewer than {MIN_TEST_PER_CLASS} examples, so candidates, calibration and the "
        "promotion guard all use the validation split" if len(cv) == 1 else
        f"no test split: a class has fewer than {MIN_TEST_PER_CLASS} examples, so candidates, calibration and the "
        f"promotion guard all use out-of-fold predictions of cross-validation ({len(cv)} folds of every example); "
        "the version served is the chosen candidate refit on every example")
    report.event("split", {"train": len(train), "validation": len(val), "test": 0 if test is None else len(test),
                           "seed": seed, **({"note": note} if note else {})})
    x = embed_cached(backbone, keys, cache, report, where)
    # The baselines' head (and the zero-shot candidate's): label names embedded, or class prototypes.
    reference, zs_tensors = reference_head(backbone, labels, x[train], y[train])
    init, init_head = None, None
    if params.get("continual") and active is not None and active.config.method == "head":
        init_head = active.config.head
        init = continual_init(init_head, labels, active.labels, active.config.head, active.tensors,
                              zs_tensors["weight"])
    job = _Job(backbone, params, keys, x, y, labels, train, val, report, cache, where, init, init_head,
               max_unfreeze_bytes)
    job.zero_shot = zs_tensors

    # -- the candidates, cheap first, within the budget --------------------------------
    planned = plan(backbone.kind, backbone.split_shape, len(keys), params, smallest, reference == "zero_shot")
    scored = np.sort(np.concatenate([held for _, held in cv]))
    everything = np.sort(np.concatenate([train, val]))  # what a refit trains on (never the test split)
    metric = ("validation macro-F1" if len(cv) == 1 else
              f"cross-validated macro-F1 ({len(cv)} folds of train + validation)")
    record: list[dict[str, Any]] = []
    speed, ratios = 1.0, []
    fits = len(cv) + (1 if len(cv) > 1 else 0)  # cross-validation: every fold, and a refit if chosen
    for k, name in enumerate(planned):
        elapsed = time.perf_counter() - started
        guess = estimate(name, len(train), speed) * fits
        if job.trained and elapsed + guess > budget:
            why = (f"time budget: {elapsed:.1f} s spent, about {guess:.1f} s more needed, "
                   f"time_budget_s {budget:g}")
            report.event("candidate_skipped", {"candidate": name, "reason": why, "estimate_s": round(guess, 2)})
            record.append({"candidate": name, "skipped": why, "estimate_s": round(guess, 2)})
            continue
        if report.cancelled():
            raise Cancelled()
        t0 = time.perf_counter()
        try:
            c = TRAINERS[name](job, name)
            oof = np.zeros((len(y), len(labels)), np.float32)
            oof[val] = c.val_logits
            for fold, (fold_train, held) in enumerate(cv[1:], 1):  # every row held out once
                other = copy.copy(job)
                other.train, other.val, other.fold = fold_train, held, fold
                oof[held] = TRAINERS[name](other, name).val_logits
            predicted = oof.argmax(1)
        except (InvalidParams, ValueError) as e:  # this candidate cannot train on this set or backbone
            report.event("candidate_skipped", {"candidate": name, "reason": str(e)})
            record.append({"candidate": name, "skipped": str(e)})
            continue
        except Cancelled:
            if report.cancelled():
                raise
            why = (f"time budget: stopped during training at {time.perf_counter() - started:.1f} s "
                   f"(estimated {guess:.1f} s, took {time.perf_counter() - t0:.1f} s), time_budget_s {budget:g}")
            report.event("candidate_skipped", {"candidate": name, "reason": why, "estimate_s": round(guess, 2)})
            record.append({"candidate": name, "skipped": why, "estimate_s": round(guess, 2)})
            ratios.append((time.perf_counter() - t0) / max(estimate(name, len(train), 1.0) * len(cv), 1e-3))
            speed = float(np.clip(np.median(ratios), 0.5, 4.0))
            continue
        job.deadline = started + budget
        c.seconds = time.perf_counter() - t0
        c.score = evaluate(y[scored], predicted[scored], labels)["macro_f1"]
        # How fast this machine runs (its load, its cores) against the reference rates: the
        # median of the candidates' ratios so far (one stall, a first torch call, moves it little).
        ratios.append(c.seconds / max(estimate(name, len(train), 1.0) * len(cv), 1e-3))
        speed = float(np.clip(np.median(ratios), 0.5, 4.0))
        if len(cv) > 1:
            c.oof = oof
            if name in REFIT:
                c.refit = _refitter(job, c, everything)
        elif backbone.kind == "text" and name in VALIDATION_REFIT:
            c.refit = _refitter(job, c, everything)  # for the epochs validation chose
        job.trained[name] = c
        entry = {"candidate": name, "method": c.method, "head": c.head, "score": round(c.score, 6),
                 "metric": metric, "seconds": round(c.seconds, 3)}
        if len(cv) > 1:
            entry["validation_split_macro_f1"] = round(evaluate(y[val], c.val_logits.argmax(1), labels)["macro_f1"], 6)
        record.append(entry)
        report.event("candidate", {k2: v for k2, v in entry.items() if k2 != "metric"}
                     | {"validation_macro_f1": round(c.score, 6)} | ({"folds": len(cv)} if len(cv) > 1 else {}))
        report.progress(0.2 + 0.7 * (k + 1) / len(planned))
        if on_candidate is not None:
            on_candidate(c)

    # -- the choice, on validation (or the folds) only ----------------------------------
    tried = list(job.trained.values())
    best, why = choose(tried, y, scored, metric) if len(cv) > 1 else choose_on_validation(tried, len(scored), metric)
    report.event("chosen", {"candidate": best.name, "method": best.method, "head": best.head,
                            "validation_macro_f1": round(best.score, 6), "reason": why})
    for entry in record:
        if entry.get("candidate") == best.name and "skipped" not in entry:
            entry["chosen"], entry["why"] = True, why

    # -- the choice refit on train + validation (cross-validation; a text head) ----------
    served = best
    if best.refit is not None:
        if report.cancelled():
            raise Cancelled()
        t0 = time.perf_counter()
        served = best.refit()
        epochs = job_epochs(best)
        refit = {"rows": int(len(everything)), "seconds": round(time.perf_counter() - t0, 3),
                 **({"epochs": epochs} if epochs else {})}
        served.training["refit"] = refit
        report.event("refit", {"candidate": best.name, **refit})

    # -- calibration on validation (or the folds); the test split, once ------------------
    if best.oof is not None:  # out-of-fold logits: every row of train + validation, held out once
        temperature, calibrated = calibration.calibrate(best.oof[scored], y[scored])
        calibrated["fitted_on"] = "cross-validation"
    else:
        temperature, calibrated = calibration.calibrate(best.val_logits, y[val])
    if test is not None:
        rows, logits = test, served.logits(test)
    elif best.oof is not None:  # no test split: the folds' estimate of the refit version
        rows, logits = scored, best.oof[scored]
    else:
        rows, logits = val, best.val_logits
    if test is not None:
        probs = calibration.softmax(logits, temperature)
        calibrated = {**calibrated, "ece_test_before": round(calibration.ece(calibration.softmax(logits), y[test]), 6),
                      "ece_test_after": round(calibration.ece(probs, y[test]), 6)}
    evaluation = evaluate(y[rows], logits.argmax(1), labels)
    baselines: dict[str, Any] = {
        "majority": evaluate(y[rows], np.full(len(rows), np.bincount(y[train]).argmax()), labels),
        reference: evaluate(y[rows], _predict(zs_tensors, "linear", x[rows]), labels),
    }
    if active is not None:
        from adapters.pipeline import _items

        index = {label: i for i, label in enumerate(labels)}
        active_x = x[rows] if active.deep is None else backbone.embed_deep(
            _items(backbone, job.texts(rows), where), [active.deep] * len(rows)).vectors
        pred = active.predict_proba(active_x, job.texts(rows) if active.needs_text else None).argmax(1)
        baselines["active"] = evaluate(y[rows], np.array([index.get(active.labels[q], -1) for q in pred]), labels)
        baselines["active"]["version"] = active.version
    changes = cards.label_changes(labels, active.labels if active else None, active.version if active else None)
    if changes and (changes["added"] or changes["dropped"]):
        report.event("labels_changed", changes)
    from adapters.pipeline import _summary, decide

    split_name = "test" if test is not None else "cross-validation" if best.oof is not None else "validation"
    metrics: dict[str, Any] = {
        **evaluation, "split": split_name,
        "validation": {"macro_f1": round(evaluate(y[val], best.val_logits.argmax(1), labels)["macro_f1"], 6),
                       "n": int(len(val))},
        "baselines": {k: _summary(v) for k, v in baselines.items()}, "calibration": calibrated,
        "selection": {"chosen": best.name, "reason": why, "test_note": note, "metric": metric,
                      "score": round(best.score, 6), "rows": int(len(scored))},
    }
    if changes is not None:
        metrics["label_changes"] = changes
    report.event("calibration", {k: calibrated[k] for k in ("temperature", "ece_before", "ece_after")})
    report.event("evaluation", {"split": split_name, "macro_f1": metrics["macro_f1"], "accuracy": metrics["accuracy"],
                                "baselines": metrics["baselines"], **({"label_changes": changes} if changes else {})})
    promote, reason = decide(metrics, baselines.get("active"), promote_margin,
                             dropped=(changes or {}).get("dropped", []),
                             allow_dropped_labels=bool(params.get("allow_dropped_labels")))
    reason = f"{reason} (" + ("on the out-of-fold predictions of cross-validation)" if split_name == "cross-validation"
                              else f"on the {split_name} split)")
    groups = cards.group_metrics(y[rows], logits.argmax(1), [examples[i].get("group") for i in rows], labels)
    if groups is not None:
        groups["split"] = split_name
    card = cards.record(data=data, curves=best.curves, groups=groups, candidates=record,
                        decision={"decision": "promote" if promote else "candidate", "reason": reason},
                        licence=getattr(backbone, "licence", "unknown"))
    config = AdapterConfig(
        backbone=backbone.id, fingerprint=backbone.fingerprint, dim=backbone.dim, head=served.head, labels=labels,
        metrics=metrics, temperature=temperature, card=card,
        training={"method": "auto", "chosen": best.name, "job_id": job_id, "examples": len(keys),
                  "train": len(train), "validation": len(val), "test": 0 if test is None else len(test),
                  "time_budget_s": budget, "seconds": round(time.perf_counter() - started, 3), **served.training},
        parent_version=active.version if active else None, **served.config,
    )
    if config.training.get("continual_from") == "active" and active is not None:
        config.training["continual_from"] = active.version
    config, weights = encode(config, served.tensors)
    report.progress(0.95)
    return Outcome(config, weights, metrics, promote, reason, active.version if active else None)
