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

    def cached_hidden_states(self, key, keys):
        return {}

    def store_hidden_states(self, key, states):
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


class CountingLower:
    """The real lower graph, counting the rows it computes; `precision` may be overridden
    (a changed lower graph for the hidden-state cache's key)."""

    def __init__(self, runner, precision=None) -> None:
        self.runner, self.rows = runner, 0
        self.model_path, self.precision = runner.model_path, precision or runner.precision

    def run(self, ids, mask):
        self.rows += len(ids)
        return self.runner.run(ids, mask)


@pytest.fixture
def counted(split_backbone, monkeypatch):
    lower = CountingLower(split_backbone.split.lower)
    monkeypatch.setattr(split_backbone.split, "lower", lower)
    return lower


@pytest.fixture
def queue(registry_url):
    from adapters.jobs import JobQueue
    from adapters.registry import Registry

    registry = Registry(registry_url)
    for tenant in ("acme", "globex"):
        registry.create_tenant(tenant)
    yield JobQueue(registry)
    registry.close()


def test_hidden_states_are_cached_per_tenant_and_lower_graph(split_backbone, counted, queue, monkeypatch):
    """Read back from the database they equal what the lower graph computes; a second
    read computes nothing; another tenant, or another lower graph, computes its own."""
    from adapters.pipeline import hidden_cached

    assert split_backbone.hidden_key == (f"{split_backbone.fingerprint}:s4:"
                                         f"{split_backbone.split.lower.model_path.stem}:fp32")
    fresh = split_backbone.hidden_states(SENTENCES)  # "" and a truncated text among them
    texts = SENTENCES + SENTENCES[:3]  # a text twice is computed once
    counted.rows = 0
    cache = queue.embedding_cache("acme")
    first, counts = hidden_cached(split_backbone, texts, cache, Reporter())
    assert counts == {"cached": 0, "computed": len(SENTENCES)} and counted.rows == len(SENTENCES)
    second, counts = hidden_cached(split_backbone, texts, cache, Reporter())
    assert counts == {"cached": len(SENTENCES), "computed": 0} and counted.rows == len(SENTENCES)
    for got, again, want in zip(first, second, fresh + fresh[:3]):
        assert got.dtype == again.dtype == np.float16 and got.shape == again.shape == want.shape
        assert np.array_equal(got, want) and np.array_equal(again, want)

    _, counts = hidden_cached(split_backbone, SENTENCES[:4], queue.embedding_cache("globex"), Reporter())
    assert counts == {"cached": 0, "computed": 4}
    monkeypatch.setattr(counted, "precision", "int8")  # another lower graph: other states
    assert split_backbone.hidden_key.endswith(":int8")
    _, counts = hidden_cached(split_backbone, SENTENCES, cache, Reporter())
    assert counts == {"cached": 0, "computed": len(SENTENCES)}


def test_a_cancel_while_computing_hidden_states_stops_and_stores_nothing(split_backbone, queue):
    from adapters.pipeline import hidden_cached
    from adapters.training import Cancelled

    class Cancelling(Reporter):
        def cancelled(self):
            return True

    cache = queue.embedding_cache("acme")
    with pytest.raises(Cancelled):
        hidden_cached(split_backbone, SENTENCES, cache, Cancelling(), chunk=4)
    assert cache.cached_hidden_states(split_backbone.hidden_key, SENTENCES) == {}


def test_a_second_lora_job_on_the_same_texts_computes_no_hidden_state(split_backbone, tmp_path, monkeypatch):
    """Through the tenant's cache in the registry database (JobQueue.embedding_cache), as
    the worker passes it: the second job's hidden states all come from the cache."""
    from adapters.jobs import JobQueue
    from adapters.pipeline import train_version
    from adapters.registry import Registry
    from tests.integration.data import split

    registry = Registry(f"sqlite:///{tmp_path}/registry.db")
    registry.create_tenant("acme")
    cache = JobQueue(registry).embedding_cache("acme")
    computed: list[int] = []
    real = split_backbone.hidden_states
    monkeypatch.setattr(split_backbone, "hidden_states", lambda texts: computed.append(len(texts)) or real(texts))
    train, _ = split()
    distinct = len({e["text"] for e in train})
    events = []
    for _ in range(2):
        report = Reporter()
        train_version(train, split_backbone, {"method": "lora", "lora_rank": 4, "epochs": 1}, active=None,
                      cache=cache, report=report, promote_margin=0.01)
        events.append(next(d for k, d in report.events if k == "hidden_states"))
    assert events[0]["cached"] == 0 and events[0]["computed"] == distinct
    assert events[1]["cached"] == distinct and events[1]["computed"] == 0
    assert sum(computed) == distinct  # the first job's texts, once
    registry.close()


# -- method unfreeze: the top layers' weights trained in full ---------------------------------

def random_layers(backbone, layers: list[int], seed: int, scale: float = 0.05):
    """An unfreeze adapter's weights: the pretrained ones of `layers`, perturbed."""
    from models.split import UnfrozenLayers

    rng = np.random.default_rng(seed)
    pretrained = backbone.split.upper_weights.pretrained
    return UnfrozenLayers({name: (w + rng.normal(0, scale, w.shape)).astype(np.float32)
                           for name, w in pretrained.items() if int(name.split(".", 1)[0]) in layers})


def unfreeze_adapter(backbone, layers, seed: int):
    from adapters.format import Adapter, AdapterConfig, deep_tensors

    shape = backbone.split_shape
    rng = np.random.default_rng(seed)
    recipe = {"layers": len(layers.layers), "split": shape.split, "backbone_layers": shape.layers,
              "hidden": shape.hidden, "intermediate": shape.intermediate}
    head = {"weight": rng.normal(size=(3, backbone.dim)).astype(np.float32), "bias": np.zeros(3, np.float32)}
    config = AdapterConfig(backbone=backbone.id, fingerprint=backbone.fingerprint, dim=backbone.dim, head="linear",
                           labels=["a", "b", "c"], method="unfreeze", unfreeze=recipe)
    return Adapter(config, {**head, **deep_tensors(layers)})


def test_torch_and_the_upper_weights_graph_agree(split_backbone):
    """Train/serve parity: the torch upper layers with an unfreeze adapter's weights (the top
    layer trained, the one below pretrained) vs the ONNX upper_weights graph fed the weights as
    adapters/deep.py extracts them: max abs difference <= 1e-4 (fp32)."""
    import torch

    from adapters.deep import _batches, _unfrozen_state

    shape = split_backbone.split_shape
    upper = split_backbone.upper_module()
    torch.manual_seed(0)
    with torch.no_grad():
        for t in upper.layers[-1].parameters():
            t.add_(torch.randn_like(t) * 0.05)
    layers = _unfrozen_state(upper, shape, 1)
    assert layers.layers == [shape.layers - 1] and layers.nbytes == shape.layer_bytes
    texts = SENTENCES[:6]
    h, m = _batches(split_backbone.hidden_states(texts), np.arange(len(texts)))
    with torch.no_grad():
        reference = upper(h, m).numpy()
    served = split_backbone.embed_deep(texts, [layers] * len(texts)).vectors
    assert np.abs(reference - served).max() <= 1e-4
    assert (reference * split_backbone.embed(texts).vectors).sum(1).min() < 0.999  # the weights do act


def test_rows_of_a_mixed_batch_with_unfreeze_adapters_equal_the_rows_alone(split_backbone):
    """Head-only, LoRA and two tenants' unfreeze adapters (one of both upper layers, one of
    the top layer only) in one backbone pass: every row gets the vector it gets alone."""
    from adapters.format import Adapter, AdapterConfig
    from service.inference import Work, backbone_pass

    shape = split_backbone.split_shape
    lora_config = AdapterConfig(backbone="", fingerprint="", dim=split_backbone.dim, head="linear", labels=["a", "b"],
                                method="lora", lora={"rank": 4, "split": shape.split})
    factors = random_factors(shape, 4, 1)
    lora = Adapter(lora_config, {"weight": np.eye(2, split_backbone.dim, dtype=np.float32), "bias": np.zeros(2),
                                 **{f"lora_{ab}.{k}": m for k, (a, b) in factors.factors.items()
                                    for ab, m in (("a", a), ("b", b))}})
    head = Adapter(AdapterConfig(backbone="", fingerprint="", dim=split_backbone.dim, head="linear",
                                 labels=["a", "b"]), {"weight": np.eye(2, split_backbone.dim, dtype=np.float32),
                                                      "bias": np.zeros(2, np.float32)})
    both = unfreeze_adapter(split_backbone, random_layers(split_backbone, [4, 5], 2), 2)
    top = unfreeze_adapter(split_backbone, random_layers(split_backbone, [5], 3), 3)
    assert both.deep is both.unfrozen and top.unfrozen.layers == [5]
    heads = ([both, head, lora, top, None, both, top, lora, head, top, both, None] * 2)[: len(SENTENCES)]
    texts = SENTENCES[: len(heads)]
    mixed = backbone_pass(split_backbone, [Work(t, a) for t, a in zip(texts, heads)])
    alone = [backbone_pass(split_backbone, [Work(t, a)])[0] for t, a in zip(texts, heads)]
    for m, a, h in zip(mixed, alone, heads):
        assert float(m.vector @ a.vector) >= 0.9999
        assert (m.scores is None) == (h is None)
        if h is not None:
            assert np.abs(m.scores - a.scores).max() < 1e-4
    plain = split_backbone.embed(texts).vectors
    changed = [float(m.vector @ p) for m, p in zip(mixed, plain)]
    assert all(c < 0.999 for c, h in zip(changed, heads) if h is not None and h.deep is not None)
    # One lower call per sub-batch for every deep row, whatever the adapters.
    deep_rows = [i for i, h in enumerate(heads) if h is not None and h.deep is not None]
    result = split_backbone.embed_deep([texts[i] for i in deep_rows], [heads[i].deep for i in deep_rows])
    alone_calls = sum(split_backbone.embed_deep([texts[i]], [heads[i].deep]).calls for i in deep_rows)
    assert result.calls < alone_calls


def test_unfreeze_params_that_do_not_fit_the_backbone(split_backbone):
    from adapters.pipeline import InvalidParams, unfreeze_params

    shape = split_backbone.split_shape
    with pytest.raises(InvalidParams, match="at most its top 2 layers"):
        unfreeze_params({"method": "unfreeze", "unfreeze_layers": 3}, shape)
    with pytest.raises(InvalidParams, match=r"GRAFT_MAX_UNFREEZE_BYTES \(10\.0 MiB\): unfreeze at most 1 layers"):
        unfreeze_params({"method": "unfreeze"}, shape, max_bytes=10 * 1024 * 1024)
    assert unfreeze_params({"method": "unfreeze", "unfreeze_layers": 1}, shape, 10 * 1024 * 1024).layers == 1
    assert unfreeze_params({"method": "unfreeze"}, shape).layers == 2


def test_the_unfreeze_pipeline_trains_a_version_that_serves(split_backbone):
    from adapters.pipeline import train_version
    from service.inference import Work, backbone_pass
    from tests.integration.data import split

    train, held_out = split()
    report = Reporter()
    outcome = train_version(train, split_backbone, {"method": "unfreeze", "unfreeze_layers": 1, "epochs": 2},
                            active=None, cache=NoCache(), report=report, promote_margin=0.01)
    config = outcome.config
    assert config.method == "unfreeze" and config.lora is None and config.unfreeze == {
        "layers": 1, "split": 4, "backbone_layers": 6, "hidden": 384, "intermediate": 1536}
    assert config.training["method"] == "unfreeze" and config.training["params"]["lr"] == 1e-4
    assert outcome.promote and [k for k, _ in report.events].count("epoch") >= 1
    adapter = decode(config.to_json(), outcome.weights, fingerprint=split_backbone.fingerprint,
                     dim=split_backbone.dim, split=4)
    assert adapter.unfrozen is not None and adapter.unfrozen.layers == [5]
    assert split_backbone.split_shape.layer_bytes < len(outcome.weights) < split_backbone.split_shape.layer_bytes + 64_000
    texts = [t for t, _ in held_out]
    rows = backbone_pass(split_backbone, [Work(t, adapter) for t in texts] + [Work("plain text")])
    accuracy = np.mean([adapter.labels[int(r.scores.argmax())] == label for r, (_, label) in zip(rows, held_out)])
    assert accuracy >= 0.7, accuracy
    assert rows[-1].scores is None
    with pytest.raises(Exception, match="split"):
        decode(config.to_json(), outcome.weights, fingerprint=split_backbone.fingerprint, dim=split_backbone.dim,
               split=3)


def test_continual_unfreeze_starts_from_the_active_weights(split_backbone):
    """A continual unfreeze job on an unfreeze active version of the same layers starts from
    its weights and head (at a learning rate that moves nothing, it ends where v1 was); with
    other layers, from the pretrained weights."""
    from adapters.pipeline import train_version
    from tests.integration.data import xor_split

    train, _ = xor_split()  # where training moves the weights (on the tickets the probe alone is best)
    params = {"method": "unfreeze", "unfreeze_layers": 1, "epochs": 2, "lr": 3e-4}
    first = train_version(train, split_backbone, params, active=None, cache=NoCache(), report=Reporter(),
                          promote_margin=0.01)
    active = decode(first.config.to_json(), first.weights, fingerprint=split_backbone.fingerprint,
                    dim=split_backbone.dim, split=4, version=1)
    second = train_version(train, split_backbone, {**params, "epochs": 1, "lr": 1e-12, "continual": True},
                           active=active, cache=NoCache(), report=Reporter(), promote_margin=0.01)
    assert second.config.training["weights_from_active"] is True and second.config.training["continual_from"] == 1
    assert second.metrics["baselines"]["active"]["macro_f1"] == first.metrics["macro_f1"]
    after = decode(second.config.to_json(), second.weights, fingerprint=split_backbone.fingerprint,
                   dim=split_backbone.dim, split=4).unfrozen
    pretrained = split_backbone.split.upper_weights.pretrained
    for name, w in active.unfrozen.weights.items():
        assert np.abs(after.weights[name] - w).max() < 1e-6
    assert max(np.abs(w - pretrained[n]).max() for n, w in active.unfrozen.weights.items()) > 1e-4
    other = train_version(train, split_backbone, {**params, "unfreeze_layers": 2, "epochs": 1, "continual": True},
                          active=active, cache=NoCache(), report=Reporter(), promote_margin=0.01)
    assert other.config.training["weights_from_active"] is False and other.config.training["continual_from"] == 1


def test_unfreeze_needs_a_split_backbone(graft_home):
    from adapters.pipeline import InvalidParams, train_version
    from tests.integration.data import split

    unsplit = load_backbone("minilm-l6", graft_home, precision="fp32")
    with pytest.raises(InvalidParams, match="method unfreeze needs a text backbone split"):
        train_version(split()[0], unsplit, {"method": "unfreeze"}, active=None, cache=NoCache(), report=Reporter(),
                      promote_margin=0.01)


def test_epoch_batches_bucket_large_sets_only():
    """Large sets: every example once, less padding than plain random batches; small sets:
    plain random batches, the same as without bucketing."""
    from adapters.deep import BUCKET_MIN_EXAMPLES, _epoch_batches

    lengths = list(np.random.default_rng(1).integers(3, 80, BUCKET_MIN_EXAMPLES + 24))

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    plain = _epoch_batches(np.random.default_rng(0), lengths, 16, 1)
    bucketed = _epoch_batches(np.random.default_rng(0), lengths, 16, 8)
    assert sorted(np.concatenate(bucketed).tolist()) == list(range(len(lengths)))
    assert all(len(b) <= 16 for b in bucketed) and padded(bucketed) < 0.8 * padded(plain)
    small = lengths[:200]
    for a, b in zip(_epoch_batches(np.random.default_rng(0), small, 16, 8),
                    _epoch_batches(np.random.default_rng(0), small, 16, 1)):
        assert np.array_equal(a, b)


def test_the_worker_refuses_an_unfreeze_job_over_its_byte_limit(split_backbone):
    """The API refuses it at submit; a worker whose GRAFT_MAX_UNFREEZE_BYTES is lower than the
    API's refuses it again, before computing anything."""
    from adapters.pipeline import InvalidParams, train_version
    from tests.integration.data import split

    train, _ = split()
    with pytest.raises(InvalidParams, match="GRAFT_MAX_UNFREEZE_BYTES"):
        train_version(train, split_backbone, {"method": "unfreeze"}, active=None, cache=NoCache(),
                      report=Reporter(), promote_margin=0.01, max_unfreeze_bytes=1024 * 1024)
