"""Deep adapters on a split text backbone: the split changes no head-only vector, rows of a
mixed batch equal the rows alone, torch (PEFT) and the ONNX upper graph agree, and the LoRA
pipeline trains, evaluates and encodes a version that serves."""
from __future__ import annotations

import numpy as np
import pytest

from adapters.format import decode
from models import load_backbone
from models.split import TARGETS, LoraFactors
from tests.conftest import SENTENCES


@pytest.fixture(scope="module")
def split_backbone(graft_home):
    return load_backbone("minilm-l6", graft_home, precision="fp32", split_layers=2)


def random_factors(shape, rank: int, seed: int, scale: float = 0.05) -> LoraFactors:
    rng = np.random.default_rng(seed)
    out = {}
    for layer in shape.upper_layers:
        for target in TARGETS:
            d_in, d_out = shape.dims(target)
            out[f"{layer}.{target}"] = (rng.normal(0, scale, (d_in, rank)).astype(np.float32),
                                        rng.normal(0, scale, (rank, d_out)).astype(np.float32))
    return LoraFactors(out)


def test_the_split_changes_no_head_only_vector(split_backbone):
    whole = split_backbone.embed(SENTENCES).vectors
    split = split_backbone.embed_deep(SENTENCES, [None] * len(SENTENCES)).vectors
    assert (whole * split).sum(1).min() >= 0.9999


def test_rows_of_a_mixed_batch_equal_the_rows_alone(split_backbone):
    """Head-only rows (no factors) and two tenants' LoRA adapters of different ranks in one
    call: every row as if it had been sent alone."""
    shape = split_backbone.split_shape
    a, b = random_factors(shape, 4, 1), random_factors(shape, 16, 2)
    rows = [a, None, b, a, None, b, b, a] * 2
    texts = SENTENCES[: len(rows)]
    mixed = split_backbone.embed_deep(texts, rows).vectors
    alone = np.stack([split_backbone.embed_deep([t], [r]).vectors[0] for t, r in zip(texts, rows)])
    assert (mixed * alone).sum(1).min() >= 0.9999
    plain = split_backbone.embed(texts).vectors
    changed = (mixed * plain).sum(1)
    assert all(changed[i] < 0.999 for i, r in enumerate(rows) if r is not None)  # the factors do act


def test_torch_and_the_onnx_upper_graph_agree(split_backbone):
    """Train/serve parity: PEFT's upper layers with LoRA vs the ONNX upper graph fed the
    factors as adapters/deep.py extracts them: max abs difference <= 1e-4 (fp32)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from adapters.deep import _batches, _state

    shape = split_backbone.split_shape
    model = get_peft_model(split_backbone.upper_module(), LoraConfig(
        r=8, lora_alpha=16, target_modules=r"layers\.\d+\.(" + "|".join(t.replace(".", r"\.") for t in TARGETS) + ")"))
    torch.manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.05)  # PEFT starts B at zero: make the factors act
    model.eval()
    factors, _ = _state(model, torch.nn.Linear(shape.hidden, 2), shape)
    texts = SENTENCES[:6]
    hidden = split_backbone.hidden_states(texts)
    h, m = _batches(hidden, np.arange(len(texts)))
    with torch.no_grad():
        reference = model(h, m).numpy()
    served = split_backbone.embed_deep(texts, [factors] * len(texts)).vectors
    assert np.abs(reference - served).max() <= 1e-4
    assert (reference * split_backbone.embed(texts).vectors).sum(1).min() < 0.999


class Reporter:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def event(self, kind, data):
        self.events.append((kind, data))

    def progress(self, fraction):
        pass

    def cancelled(self):
        return False


class NoCache:
    def cached_embeddings(self, fingerprint, keys):
        return {}

    def store_embeddings(self, fingerprint, vectors):
        pass


def test_the_lora_pipeline_trains_a_version_that_serves(split_backbone):
    from adapters.pipeline import train_version
    from service.inference import Work, backbone_pass
    from tests.integration.data import split

    train, held_out = split()
    report = Reporter()
    outcome = train_version(train, split_backbone, {"method": "lora", "lora_rank": 4, "epochs": 2},
                            active=None, cache=NoCache(), report=report, promote_margin=0.01)
    config = outcome.config
    assert config.method == "lora" and config.lora == {
        "rank": 4, "alpha": 8.0, "layers": 2, "split": 4,
        "targets": ["query", "key", "value", "attention_output", "ffn_in", "ffn_out"]}
    assert outcome.promote and [k for k, _ in report.events].count("epoch") >= 1
    adapter = decode(config.to_json(), outcome.weights, fingerprint=split_backbone.fingerprint,
                     dim=split_backbone.dim, split=4)
    assert adapter.lora is not None and adapter.lora.rank == 4
    assert len(outcome.weights) < 512 * 1024  # rank 4, 2 layers, 6 projections each
    # Served in a batch with head-only rows: the LoRA rows get the adapter's predictions.
    texts = [t for t, _ in held_out]
    rows = backbone_pass(split_backbone, [Work(t, adapter) for t in texts] + [Work("plain text")])
    predicted = [adapter.labels[int(r.scores.argmax())] for r in rows[:-1]]
    accuracy = np.mean([p == label for p, (_, label) in zip(predicted, held_out)])
    assert accuracy >= 0.7, accuracy
    assert rows[-1].scores is None
    with pytest.raises(Exception, match="split"):
        decode(config.to_json(), outcome.weights, fingerprint=split_backbone.fingerprint, dim=split_backbone.dim,
               split=3)


@pytest.mark.parametrize("params, needle", [
    ({"method": "lora", "lora_layers": 3}, "at most its top 2 layers"),
])
def test_lora_params_that_do_not_fit_the_backbone(split_backbone, params, needle):
    from adapters.pipeline import InvalidParams, lora_params

    with pytest.raises(InvalidParams, match=needle):
        lora_params(params, split_backbone.split_shape)


def test_continual_lora_starts_from_the_active_factors(split_backbone):
    """A continual LoRA job on a LoRA active version of the same recipe starts from its
    factors and head: its first evaluation (before any epoch) already scores as v1 did."""
    from adapters.pipeline import train_version
    from tests.integration.data import split

    train, _ = split()
    first = train_version(train, split_backbone, {"method": "lora", "lora_rank": 4, "epochs": 3}, active=None,
                          cache=NoCache(), report=Reporter(), promote_margin=0.01)
    active = decode(first.config.to_json(), first.weights, fingerprint=split_backbone.fingerprint,
                    dim=split_backbone.dim, split=4, version=1)
    report = Reporter()
    second = train_version(train, split_backbone, {"method": "lora", "lora_rank": 4, "epochs": 1, "continual": True},
                           active=active, cache=NoCache(), report=report, promote_margin=0.01)
    assert second.config.training["factors_from_active"] is True
    assert second.config.training["continual_from"] == 1
    assert second.metrics["baselines"]["active"]["macro_f1"] == first.metrics["macro_f1"]
    assert second.metrics["macro_f1"] >= first.metrics["macro_f1"] - 0.05


def test_factors_survive_the_way_into_peft_and_back(split_backbone):
    import torch
    from peft import LoraConfig, get_peft_model

    from adapters.deep import _load_factors, _state

    shape = split_backbone.split_shape
    factors = random_factors(shape, 8, 3)
    model = get_peft_model(split_backbone.upper_module(), LoraConfig(
        r=8, lora_alpha=16, target_modules=r"layers\.\d+\.(" + "|".join(t.replace(".", r"\.") for t in TARGETS) + ")"))
    with torch.no_grad():
        _load_factors(model, shape, factors)
    back, _ = _state(model, torch.nn.Linear(shape.hidden, 2), shape)
    for key, (a, b) in factors.factors.items():
        assert np.abs(back.factors[key][0] - a).max() < 1e-6 and np.abs(back.factors[key][1] - b).max() < 1e-6


def test_gradual_unfreezing_trains_the_top_layer_first():
    from adapters.deep import unfrozen

    assert [unfrozen(e, 3, True) for e in (1, 2, 3, 4)] == [{2}, {1, 2}, {0, 1, 2}, {0, 1, 2}]
    assert unfrozen(1, 3, False) == {0, 1, 2}


def test_a_gradually_unfrozen_lora_job_trains_and_serves(split_backbone):
    from adapters.pipeline import train_version
    from tests.integration.data import split

    train, _ = split()
    outcome = train_version(train, split_backbone, {"method": "lora", "lora_rank": 4, "epochs": 2,
                                                    "gradual_unfreeze": True},
                            active=None, cache=NoCache(), report=Reporter(), promote_margin=0.01)
    assert outcome.config.training["params"]["gradual_unfreeze"] is True
    adapter = decode(outcome.config.to_json(), outcome.weights, fingerprint=split_backbone.fingerprint,
                     dim=split_backbone.dim, split=4)
    assert adapter.lora is not None and outcome.metrics["macro_f1"] > 0.5
