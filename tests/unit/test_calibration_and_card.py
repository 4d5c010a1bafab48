"""Calibrated scores (temperature scaling), label changes in the promotion decision and the
registry, and the model card's pieces (issue 16, points 4-6), without a server."""
from __future__ import annotations

import json

import numpy as np
import pytest

from adapters import calibration, card as cards, zero_shot
from adapters.format import Adapter, AdapterConfig, AdapterFormatError, encode
from adapters.pipeline import decide
from adapters.registry import LabelsDropped, Registry
from service import cards as render


def overconfident(n: int = 600, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a head right 70% of the time that puts ~99.9% on its answer."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.7, y, (y + rng.integers(1, k, n)) % k)
    logits = rng.normal(0, 0.5, (n, k))
    logits[np.arange(n), pred] += 8.0
    return logits, y


def test_temperature_scaling_fixes_an_over_confident_head():
    logits, y = overconfident()
    before = calibration.ece(calibration.softmax(logits), y)
    t, report = calibration.calibrate(logits, y)
    after = calibration.ece(calibration.softmax(logits, t), y)
    assert before > 0.2, before  # 70% right at ~100% confidence
    assert t > 2 and after < before / 4, (t, before, after)
    assert report["ece_before"] == pytest.approx(before, abs=1e-6)
    assert report["ece_after"] == pytest.approx(after, abs=1e-6)
    assert report["nll_after"] < report["nll_before"] and report["bins"] == 15
    # the fitted T is where the (smoothed) NLL is lowest: nudging it either way is worse
    fit = lambda temperature: calibration.objective(logits, y, temperature)  # noqa: E731
    assert fit(t) <= min(fit(t * 1.05), fit(t / 1.05))


def test_a_small_validation_split_all_right_does_not_make_every_score_one():
    """6 of 6 right: Laplace's rule says ~7/8, so T stays well above the search's bound and
    the mean top score lands near (n+1)/(n+2), not 1.0."""
    rng = np.random.default_rng(3)
    y = np.array([0, 0, 1, 1, 2, 2])
    logits = rng.normal(0, 0.1, (6, 3))
    logits[np.arange(6), y] += 1.0  # right, and timid
    t, report = calibration.calibrate(logits, y)
    assert calibration.T_MIN * 2 < t < 1.0, t
    confidence = calibration.softmax(logits, t).max(axis=1).mean()
    assert 0.8 < confidence < 0.95, confidence
    assert report["label_smoothing"] == pytest.approx(3 / (2 * 8))


def test_a_timid_head_is_sharpened_and_an_honest_one_left_near_one():
    logits, y = overconfident()
    t, _ = calibration.calibrate(logits / 40, y)  # same ranking, scores near uniform
    assert t < 0.2
    rng = np.random.default_rng(1)
    honest = rng.normal(0, 1, (4000, 3))
    y_honest = np.array([rng.choice(3, p=p) for p in calibration.softmax(honest)])  # labels drawn from its scores
    t, report = calibration.calibrate(honest, y_honest)
    assert 0.85 < t < 1.15 and report["ece_before"] < 0.05, (t, report)


def test_ece_of_a_perfectly_calibrated_bin_is_zero():
    probs = np.array([[0.75, 0.25]] * 4)
    assert calibration.ece(probs, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    assert calibration.ece(probs, np.array([0, 0, 0, 0])) == pytest.approx(0.25)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_predict_proba_is_softmax_of_logits_over_t(head):
    rng = np.random.default_rng(0)
    dim, k = 8, 3
    tensors = ({"weight": rng.normal(size=(k, dim)), "bias": rng.normal(size=k)} if head == "linear" else
               {"w1": rng.normal(size=(5, dim)), "b1": rng.normal(size=5), "w2": rng.normal(size=(k, 5)),
                "b2": rng.normal(size=k)})
    tensors = {n: t.astype(np.float32) for n, t in tensors.items()}
    x = rng.normal(size=(6, dim)).astype(np.float32)
    base = AdapterConfig(backbone="b", fingerprint="f", dim=dim, head=head, labels=["a", "b", "c"])
    plain = Adapter(base, tensors)
    warm = Adapter(AdapterConfig(**{**base.__dict__, "temperature": 2.5}), tensors)
    np.testing.assert_allclose(warm.predict_proba(x), calibration.softmax(plain.logits(x), 2.5), rtol=1e-5)
    np.testing.assert_allclose(plain.predict_proba(x), calibration.softmax(plain.logits(x)), rtol=1e-5)
    assert (warm.predict_proba(x).argmax(1) == plain.predict_proba(x).argmax(1)).all()


def test_a_config_without_temperature_loads_at_one_and_a_bad_one_is_refused():
    config, _ = encode(*zero_shot.build("b", "f" * 32, ["a", "b"], np.eye(2, 4, dtype=np.float32)))
    old = {k: v for k, v in json.loads(config.to_json()).items() if k not in ("temperature", "card")}
    loaded = AdapterConfig.from_json(json.dumps(old))
    assert loaded.temperature == 1.0 and loaded.card == {}
    for bad in (0, -1.0, float("inf"), "2", True):
        with pytest.raises(AdapterFormatError):
            AdapterConfig.from_json(json.dumps({**old, "temperature": bad}))


def test_decide_keeps_a_version_that_drops_labels_unless_allowed():
    better, active = {"macro_f1": 0.9}, {"macro_f1": 0.5, "version": 4}
    promote, reason = decide(better, active, 0.01, dropped=["account"])
    assert not promote and "['account']" in reason and "version 4" in reason and "allow_dropped_labels" in reason
    assert decide(better, active, 0.01, dropped=["account"], allow_dropped_labels=True)[0]
    assert decide(better, None, 0.01, dropped=[])[0]  # nothing serves: nothing to drop
    worse = {"macro_f1": 0.4}
    assert not decide(worse, active, 0.01, dropped=["account"], allow_dropped_labels=True)[0]  # the margin still holds


def test_label_changes():
    assert cards.label_changes(["a", "b"], None, None) is None
    assert cards.label_changes(["a", "b", "d"], ["a", "b", "c"], 3) == {"active_version": 3, "added": ["d"], "dropped": ["c"]}


def test_the_registry_refuses_a_promote_that_drops_labels(tmp_path):
    registry = Registry(f"sqlite:///{tmp_path}/r.db")
    registry.create_tenant("acme")

    def version(labels):
        return encode(*zero_shot.build("b", "f" * 32, labels, np.eye(len(labels), 4, dtype=np.float32)))

    registry.create_adapter("acme", "support", *version(["refund", "shipping", "account"]))
    two = registry.add_version("acme", "support", *version(["refund", "shipping"]), activate=False)
    more = registry.add_version("acme", "support", *version(["refund", "shipping", "account", "other"]), activate=False)
    with pytest.raises(LabelsDropped) as err:
        registry.promote("acme", "support", two)
    assert err.value.details == {"version": two, "active_version": 1, "dropped": ["account"]}
    assert "['account']" in str(err.value) and "allow_dropped_labels" in str(err.value)
    assert registry.active("acme", "support")[0].version == 1  # nothing changed
    assert registry.promote("acme", "support", more) == more  # adds a label, drops none
    assert registry.promote("acme", "support", two, allow_dropped_labels=True) == two
    registry.close()


EXAMPLES = [
    {"text": "refund me", "label": "refund", "group": "en"},
    {"text": "refund me", "label": "refund", "group": "en"},  # a duplicate
    {"text": "where is it", "label": "shipping", "group": "fr"},
    {"text": "where is it", "label": "refund"},  # a conflict: the same text, another label
    {"text": "my parcel is late again", "label": "shipping", "group": "fr"},
]


def test_data_summary_counts_duplicates_conflicts_and_groups():
    data = cards.data_summary(EXAMPLES, ["refund", "shipping"])
    assert data["per_class"] == {"refund": 3, "shipping": 2} and data["examples"] == 5
    assert data["duplicates"] == 1
    assert data["label_conflicts"] == {"items": 1, "examples": [{"item": "where is it", "labels": ["refund", "shipping"]}]}
    assert data["groups"] == {"en": 2, "fr": 2}
    assert data["lengths"]["words"] == {"min": 2, "median": 3.0, "mean": 3.0, "max": 5}


def test_group_metrics_and_the_largest_gap():
    y = np.array([0, 1, 0, 1, 0, 1])
    pred = np.array([0, 1, 0, 1, 1, 0])
    g = cards.group_metrics(y, pred, ["a", "a", "a", "b", "b", None], ["x", "y"])
    assert g["groups"]["a"] == {"macro_f1": 1.0, "accuracy": 1.0, "n": 3}
    assert g["groups"]["b"]["n"] == 2 and g["groups"]["b"]["macro_f1"] < 0.5
    assert g["largest_gap"]["best"] == "a" and g["largest_gap"]["worst"] == "b"
    assert g["largest_gap"]["macro_f1"] == pytest.approx(1.0 - g["groups"]["b"]["macro_f1"])
    assert cards.group_metrics(y, pred, [None] * 6, ["x", "y"]) is None


def test_a_zero_shot_version_still_has_a_card_that_renders():
    config, _ = encode(*zero_shot.build("minilm-l6", "f" * 32, ["a", "b"], np.eye(2, 4, dtype=np.float32)))
    card = cards.build("t", "a", 1, config, active=True, created_at="2026-01-01T00:00:00+00:00")
    assert card["method"]["name"] == "zero-shot" and card["candidates"] == [] and card["data"] is None
    assert card["calibration"]["temperature"] == 1.0
    image = render.png(card)
    assert image[:8] == b"\x89PNG\r\n\x1a\n"
    text = render.markdown(card, image)
    assert text.startswith("# Model card: t/a version 1") and "data:image/png;base64," in text
