"""Trainer and evaluation: learns separable data, deterministic per seed, class weights,
early stopping, cancellation, continual start; metrics checked by hand."""
from __future__ import annotations

import numpy as np
import pytest

from adapters.evaluation import evaluate, stratified_split
from adapters.training import Cancelled, TrainParams, continual_init, train_head

LABELS = ["a", "b", "c"]


def blobs(n_per_class=(20, 20, 20), dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(n_per_class), dim)) * 3
    x = np.concatenate([centers[c] + rng.normal(size=(n, dim)) for c, n in enumerate(n_per_class)])
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), y


def test_evaluate_by_hand():
    m = evaluate(np.array([0, 0, 1, 1]), np.array([0, 1, 1, -1]), ["x", "y"])
    assert m["accuracy"] == 0.5
    assert m["per_class"]["x"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_class"]["y"]["precision"] == 0.5 and m["per_class"]["y"]["recall"] == 0.5
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert m["confusion"]["matrix"] == [[1, 1], [0, 1]]


def test_stratified_split_keeps_every_class_on_both_sides():
    y = np.array([0] * 2 + [1] * 10 + [2] * 3)
    train, val = stratified_split(y, 0.2, seed=1)
    assert set(y[train]) == set(y[val]) == {0, 1, 2}
    assert len(set(train) & set(val)) == 0 and len(train) + len(val) == len(y)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_learns_separable_classes(head):
    x, y = blobs()
    tr, va = stratified_split(y, 0.25, 0)
    out = train_head(x[tr], y[tr], x[va], y[va], LABELS, TrainParams(head=head, epochs=60))
    assert out.val_metrics["macro_f1"] > 0.95
    assert set(out.tensors) == ({"weight", "bias"} if head == "linear" else {"w1", "b1", "w2", "b2"})


def test_deterministic_for_a_seed():
    x, y = blobs()
    tr, va = stratified_split(y, 0.25, 0)
    a = train_head(x[tr], y[tr], x[va], y[va], LABELS, TrainParams(epochs=10, seed=3))
    b = train_head(x[tr], y[tr], x[va], y[va], LABELS, TrainParams(epochs=10, seed=3))
    c = train_head(x[tr], y[tr], x[va], y[va], LABELS, TrainParams(epochs=10, seed=4))
    assert np.array_equal(a.tensors["weight"], b.tensors["weight"])
    assert not np.array_equal(a.tensors["weight"], c.tensors["weight"])


def test_early_stopping_and_cancel():
    x, y = blobs()
    tr, va = stratified_split(y, 0.25, 0)
    reports = []
    out = train_head(x[tr], y[tr], x[va], y[va], LABELS, TrainParams(epochs=500, patience=5),
                     on_epoch=lambda r: reports.append(r) or False)
    assert out.stopped_early and out.epochs_run < 500 and len(reports) == out.epochs_run
    with pytest.raises(Cancelled):
        train_head(x[tr], y[tr], x[va], y[va], LABELS, TrainParams(epochs=50), on_epoch=lambda r: r.epoch == 3)


def test_class_weights_help_the_rare_class():
    x, y = blobs(n_per_class=(60, 60, 4), seed=5)
    tr, va = stratified_split(y, 0.25, 0)
    out = train_head(x[tr], y[tr], x[va], y[va], LABELS, TrainParams(epochs=80))
    assert out.val_metrics["per_class"]["c"]["recall"] == 1.0


def test_continual_init_keeps_known_rows_and_adds_new_labels():
    active = {"weight": np.ones((2, 4), dtype=np.float32), "bias": np.array([1.0, 2.0], dtype=np.float32)}
    zs = np.full((3, 4), 7.0, dtype=np.float32)
    init = continual_init("linear", ["b", "new", "a"], ["a", "b"], "linear", active, zs)
    assert init["bias"].tolist() == [2.0, 0.0, 1.0]
    assert init["weight"][1].tolist() == [7.0] * 4
    assert continual_init("mlp", ["a"], ["a"], "linear", active, zs) is None


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_standardised_training_is_folded_into_a_head_on_raw_features(head):
    """The exported head reads raw embeddings: its validation scores are the trainer's own."""
    from adapters.format import Adapter, AdapterConfig

    x, y = blobs()
    x = np.abs(x) + 1.0  # all features positive and sharing a direction, like CNN pooled features
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    train, val = stratified_split(y, 0.25, seed=0)
    params = TrainParams(head=head, standardize=True, epochs=40, hidden=32)
    out = train_head(x[train], y[train], x[val], y[val], LABELS, params)
    config = AdapterConfig(backbone="", fingerprint="", dim=x.shape[1], head=head, labels=LABELS)
    raw_pred = Adapter(config, out.tensors).predict_proba(x[val]).argmax(1)
    assert evaluate(y[val], raw_pred, LABELS)["macro_f1"] == pytest.approx(out.val_metrics["macro_f1"])
    assert out.val_metrics["macro_f1"] >= 0.9


def test_fold_and_unfold_are_inverse():
    from adapters.training import _fold

    rng = np.random.default_rng(0)
    tensors = {"weight": rng.normal(size=(3, 8)).astype(np.float32), "bias": rng.normal(size=3).astype(np.float32)}
    shift, scale = rng.normal(size=8).astype(np.float32), rng.uniform(0.5, 2, 8).astype(np.float32)
    back = _fold(_fold(tensors, "linear", shift, scale), "linear", shift, scale, inverse=True)
    assert np.allclose(back["weight"], tensors["weight"], atol=1e-5)
    assert np.allclose(back["bias"], tensors["bias"], atol=1e-5)
