"""Few-shot contrastive fine-tuning (adapters/fewshot.py, method setfit): the pairs, the head,
a setfit job that moves the vectors as its pairs ask and serves through the upper graph as
torch computed it, and how auto plans and cross-validates few-shot sets."""
from __future__ import annotations

import numpy as np
import pytest

from adapters import auto
from adapters.fewshot import SetFitParams, fit_head, pairs
from adapters.format import decode
from models import load_backbone
from tests.integration.data import split
from tests.unit.test_deep import Reporter


@pytest.fixture(scope="module")
def split_backbone(graft_home):
    return load_backbone("minilm-l6", graft_home, precision="fp32", split_layers=2)


class Cache:
    def __init__(self) -> None:
        self.vectors: dict = {}
        self.states: dict = {}

    def cached_embeddings(self, fingerprint, keys):
        return {k: self.vectors[k] for k in keys if k in self.vectors}

    def store_embeddings(self, fingerprint, vectors):
        self.vectors.update(vectors)

    def cached_hidden_states(self, key, keys):
        return {k: self.states[k] for k in keys if k in self.states}

    def store_hidden_states(self, key, states):
        self.states.update(states)


def test_pairs_are_what_setfit_draws():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    left, right, target = pairs(y, 5, np.random.default_rng(0))
    assert len(left) == len(right) == len(target) == 2 * 5 * len(y)
    assert (left != right).all()
    assert ((y[left] == y[right]) == (target == 1)).all() and target.mean() == 0.5
    assert np.bincount(left).tolist() == [10] * len(y)  # every example, once positive and once negative a round
    with pytest.raises(ValueError, match="two training examples"):
        pairs(np.array([0, 0, 1]), 1, np.random.default_rng(0))


@pytest.mark.parametrize("k", [2, 3])
def test_the_head_predicts_as_scikit_learn_does(k):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)).astype(np.float32), np.arange(60) % k
    x[np.arange(60), y] += 2
    head = fit_head(x, y, k, 1.0, 0)
    reference = LogisticRegression(C=1.0, max_iter=1000, random_state=0).fit(x, y)
    assert head["weight"].shape == (k, 5) and head["bias"].shape == (k,)
    assert ((x @ head["weight"].T + head["bias"]).argmax(1) == reference.predict(x)).all()


def test_a_setfit_job_pulls_labels_apart_and_serves_what_torch_computed(split_backbone):
    """Method setfit on 6 tickets a team (tests/integration/data.py: team codes the encoder
    cannot read; 5 train, 1 validates): a LoRA version whose factors moved; on the training
    texts same-team pairs drew closer than other-team pairs by far more than before, as its
    loss asks; the served vectors
    (the ONNX upper graph fed the factors) equal torch's (PEFT with those factors loaded)
    and its predictions on held-out tickets are right."""
    import torch

    from adapters.deep import _batches, _load_factors, lora_model
    from adapters.pipeline import train_version
    from service.inference import Work, backbone_pass

    train, held_out = split()
    train = [e for i, e in enumerate(train) if i % 10 < 6]
    report = Reporter()
    out = train_version(train, split_backbone, {"method": "setfit"}, active=None, cache=Cache(),
                        report=report, promote_margin=0.01)
    config = out.config
    assert config.method == "lora" and config.training["method"] == "setfit" and out.promote
    assert config.lora == {"rank": 8, "alpha": 16.0, "layers": 2, "split": 4,
                           "targets": ["query", "key", "value", "attention_output", "ffn_in", "ffn_out"]}
    assert [d["epoch"] for k, d in report.events if k == "epoch"] == [1]
    adapter = decode(config.to_json(), out.weights, fingerprint=split_backbone.fingerprint, dim=split_backbone.dim,
                     split=4)
    factors = adapter.lora
    assert factors is not None and max(np.abs(b).max() for _, b in factors.factors.values()) > 1e-3

    texts = [e["text"] for e in train]
    y = np.array([int(e["label"][-1]) for e in train])
    before = split_backbone.embed(texts).vectors
    after = split_backbone.embed_deep(texts, [factors] * len(texts)).vectors
    same = (y[:, None] == y[None, :]) & ~np.eye(len(y), dtype=bool)
    other = y[:, None] != y[None, :]
    cos_before, cos_after = before @ before.T, after @ after.T
    gap_before = cos_before[same].mean() - cos_before[other].mean()
    gap_after = cos_after[same].mean() - cos_after[other].mean()
    assert gap_after > gap_before + 0.1, (gap_before, gap_after)

    model = lora_model(split_backbone.upper_module(), split_backbone.split_shape, 2, 8, 16.0,
                       SetFitParams().targets, 0.0)
    with torch.no_grad():
        _load_factors(model, split_backbone.split_shape, factors)
        model.eval()
        h, m = _batches(split_backbone.hidden_states(texts[:6]), np.arange(6))
        reference = model(h, m).numpy()
    assert np.abs(reference - after[:6]).max() <= 1e-4

    rows = backbone_pass(split_backbone, [Work(t, adapter) for t, _ in held_out])
    predicted = [adapter.labels[int(r.scores.argmax())] for r in rows]
    assert np.mean([p == label for p, (_, label) in zip(predicted, held_out)]) >= 0.75


def test_setfit_params_that_do_not_fit(split_backbone):
    from adapters.pipeline import InvalidParams, setfit_params

    shape = split_backbone.split_shape
    assert setfit_params({"method": "setfit", "lora_rank": 4, "lr": 3e-4, "epochs": 2}, shape) == SetFitParams(
        rank=4, alpha=8.0, lr=3e-4, epochs=2)
    with pytest.raises(InvalidParams, match="at most its top 2 layers"):
        setfit_params({"lora_layers": 3}, shape)
    with pytest.raises(InvalidParams, match="continual"):
        setfit_params({"continual": True}, shape)


def test_auto_plans_setfit_for_few_shot_text_sets_only(split_backbone):
    shape = split_backbone.split_shape
    assert auto.plan("text", shape, 16, {}, 8) == ["head", "lexical", "hybrid", "setfit"]
    assert auto.plan("text", shape, 66, {}, 33) == ["head", "lexical", "hybrid"]
    assert auto.plan("text", None, 16, {}, 8) == ["head", "lexical", "hybrid"]  # not split: no deep adapter
    assert "setfit" not in auto.plan("image", shape, 16, {}, 8)


@pytest.mark.parametrize("per_class", [3, 8, 32])
def test_cross_validation_folds_hold_every_row_out_once(per_class):
    y = np.repeat([0, 1, 2], per_class)
    train, val, test = auto.split(y, 0.2, 0)
    folds = auto.folds(y, train, val, 0)
    assert (folds[0][0] == train).all() and (folds[0][1] == val).all()  # the validation split is one fold
    assert 2 <= len(folds) <= auto.CV_FOLDS
    held = np.concatenate([h for _, h in folds])
    rows = np.concatenate([train, val])
    assert sorted(held.tolist()) == sorted(rows.tolist())  # each row held out exactly once
    assert test is None or not set(held.tolist()) & set(test.tolist())  # the test split is never in a fold
    for fold_train, fold_held in folds:
        assert not set(fold_train.tolist()) & set(fold_held.tolist())
        assert sorted(fold_train.tolist() + fold_held.tolist()) == sorted(rows.tolist())
        assert np.bincount(y[fold_train], minlength=3).min() >= 2  # every class trains in every fold
