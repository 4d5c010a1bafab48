"""Method unfreeze on the image backbone (models/image_split.py): the split changes no vector,
rows of a mixed batch (head-only and two tenants' unfreeze adapters) equal the rows alone,
torch and the ONNX upper_weights graph agree, and the pipeline trains, evaluates and encodes
a version that serves; parameters that do not fit are refused saying what is allowed."""
from __future__ import annotations

import base64

import numpy as np
import pytest

from adapters.format import Adapter, AdapterConfig, AdapterFormatError, decode, deep_tensors, encode
from models import load_backbone
from models.image_split import image_split_shape, lite_blocks
from models.split import UnfrozenLayers
from tests.images import SHAPES, jpeg, png
from tests.unit.test_deep import NoCache, Reporter

IMAGES = [png(i) for i in range(8)] + [jpeg(100 + i, size=(200, 150)) for i in range(4)]
LABELS = sorted(SHAPES)


@pytest.fixture(scope="module")
def backbone(graft_home):
    """int8 asked, as the service runs it: head-only rows take what the int8 gate serves here,
    unfreeze rows the fp32 split graphs (the last 2 blocks and the head conv above the split)."""
    return load_backbone("efficientnet-lite0", graft_home, precision="int8", provider="cpu", image_split_blocks=2)


def random_layers(backbone, blocks: int, seed: int, scale: float = 0.05) -> UnfrozenLayers:
    """An unfreeze adapter's weights: the pretrained ones of its top `blocks` blocks and the head
    conv, perturbed."""
    rng = np.random.default_rng(seed)
    units = backbone.split_shape.unfrozen_units(blocks)
    pretrained = backbone.split.upper_weights.pretrained
    return UnfrozenLayers({name: (w * (1 + rng.normal(0, scale, w.shape))).astype(np.float32)
                           for name, w in pretrained.items() if int(name.split(".", 1)[0]) in units})


def unfreeze_adapter(backbone, layers: UnfrozenLayers, blocks: int, seed: int) -> Adapter:
    rng = np.random.default_rng(seed)
    head = {"weight": rng.normal(size=(3, backbone.dim)).astype(np.float32), "bias": np.zeros(3, np.float32)}
    config = AdapterConfig(backbone=backbone.id, fingerprint=backbone.fingerprint, dim=backbone.dim, head="linear",
                           labels=LABELS, method="unfreeze", unfreeze=backbone.split_shape.unfreeze_recipe(blocks))
    config, weights = encode(config, {**head, **deep_tensors(layers)})  # what the format checks, it passes
    return decode(config.to_json(), weights, fingerprint=backbone.fingerprint, dim=backbone.dim,
                  split=backbone.split_shape.split)


def test_the_shape_counts_blocks_and_the_head_conv(backbone):
    shape = backbone.split_shape
    assert len(lite_blocks("efficientnet-lite0")) == 16 == shape.layers
    assert (shape.split, shape.channels, shape.side, shape.hidden) == (14, 192, 7, 1280)
    assert shape.upper_layers == [14, 15, 16] and shape.unfrozen_units(1) == [15, 16]  # 16: the head conv
    # What the export checked against torch, the pretrained weights show too.
    pretrained = backbone.split.upper_weights.pretrained
    assert {n: tuple(w.shape) for n, w in pretrained.items()} == {
        f"{u}.{p}": s for u in shape.upper_layers for p, s in shape.params_of(u).items()}
    assert shape.unfreeze_bytes(1) == 4 * sum(w.size for n, w in pretrained.items() if n.split(".")[0] in ("15", "16"))
    five = image_split_shape("efficientnet-lite0", 5)  # block 11 halves the side: its input is 14 x 14
    assert (five.split, five.channels, five.side) == (11, 112, 14)
    with pytest.raises(ValueError, match="16 blocks"):
        image_split_shape("efficientnet-lite0", 17)
    d = backbone.describe()["deep_adapters"]
    assert d == {"methods": ["unfreeze"], "layers": 2, "split": 14, "unit": "block", "precision": "fp32"}


def test_the_split_changes_no_vector(backbone, graft_home):
    """The lower graph and the upper_weights graph fed the pretrained weights give the whole
    fp32 graph's vectors."""
    from models.export import ensure_artifact
    from models.runtime import OrtRunner

    whole = OrtRunner(ensure_artifact(backbone.spec, "fp32", graft_home), "CPUExecutionProvider", "fp32")
    pixels = np.stack([backbone.prepare(i) for i in IMAGES])
    split = backbone.embed_deep(IMAGES, [None] * len(IMAGES)).vectors
    assert (whole.run(pixels) * split).sum(1).min() >= 0.9999


def test_rows_of_a_mixed_image_batch_equal_the_rows_alone(backbone):
    """Head-only rows, plain embeddings and two tenants' unfreeze adapters (one of the last
    block, one of the last two) in one backbone pass: every row gets the vector and scores it
    gets alone; head-only rows keep the whole graph at the served precision, exactly."""
    from service.inference import Work, backbone_pass

    one = unfreeze_adapter(backbone, random_layers(backbone, 1, 1), 1, 1)
    two = unfreeze_adapter(backbone, random_layers(backbone, 2, 2), 2, 2)
    assert one.unfrozen.layers == [15, 16] and two.unfrozen.layers == [14, 15, 16] and one.deep is one.unfrozen
    head = Adapter(AdapterConfig(backbone=backbone.id, fingerprint=backbone.fingerprint, dim=backbone.dim,
                                 head="linear", labels=LABELS),
                   {"weight": np.eye(3, backbone.dim, dtype=np.float32), "bias": np.zeros(3, np.float32)})
    heads = [one, head, two, None, one, two, head, one, None, two, head, one]
    items = [backbone.prepare(i) for i in IMAGES]
    mixed = backbone_pass(backbone, [Work(x, a) for x, a in zip(items, heads)])
    alone = [backbone_pass(backbone, [Work(x, a)])[0] for x, a in zip(items, heads)]
    for m, a, h in zip(mixed, alone, heads):
        assert float(m.vector @ a.vector) >= 0.9999
        assert (m.scores is None) == (h is None)
        if h is not None:
            assert np.abs(m.scores - a.scores).max() < 1e-4
    plain = [i for i, h in enumerate(heads) if h is None or h.deep is None]
    served = backbone.embed([items[i] for i in plain]).vectors  # today's path, today's precision
    assert np.array_equal(np.stack([mixed[i].vector for i in plain]), served)
    whole = backbone.embed(items).vectors
    deep = [i for i, h in enumerate(heads) if h is not None and h.deep is not None]
    assert all(float(mixed[i].vector @ whole[i]) < 0.999 for i in deep)  # the weights do act
    assert all(float(mixed[i].vector @ mixed[j].vector) < 0.9999 for i, j in ((0, 2), (4, 5)))  # each its own
    # One lower call for all deep rows (8 a call), then one upper call per adapter.
    result = backbone.embed_deep([items[i] for i in deep], [heads[i].deep for i in deep])
    assert result.calls == 1 + 2


def test_torch_and_the_image_upper_weights_graph_agree(backbone):
    """Train/serve parity: the torch upper blocks and head conv with an unfreeze adapter's
    weights (the last block and the head conv changed, the block below pretrained) vs the ONNX
    upper_weights graph fed the weights as adapters/deep.py extracts them, on the same lower
    feature maps: max abs difference <= 1e-4 (fp32)."""
    import torch

    from adapters.deep import _batches, _unfrozen_state

    shape = backbone.split_shape
    upper = backbone.upper_module()
    torch.manual_seed(0)
    with torch.no_grad():
        for module in upper.layers[-2:]:
            for t in module.parameters():
                t.mul_(1 + torch.randn_like(t) * 0.05)
    upper.train()  # as the training loop leaves it: batch norms must stay in inference mode
    assert not any(m.training for m in upper.modules() if isinstance(m, torch.nn.BatchNorm2d))
    upper.eval()
    layers = _unfrozen_state(upper, shape, 1)
    assert layers.layers == [15, 16] and layers.nbytes == shape.unfreeze_bytes(1)
    hidden = backbone.hidden_states(IMAGES)
    assert hidden[0].shape == (49, 192) and hidden[0].dtype == np.float16
    h, m = _batches(hidden, np.arange(len(IMAGES)))
    with torch.no_grad():
        reference = upper(h, m).numpy()
    served = backbone.split.upper(h.numpy(), layers)
    assert np.abs(reference - served).max() <= 1e-4
    pixels = np.stack([backbone.prepare(i) for i in IMAGES])
    lower = np.concatenate([backbone.split.lower.run(pixels[i : i + 8]) for i in range(0, len(pixels), 8)])
    assert np.array_equal(lower.astype(np.float16), np.stack(hidden))  # training's states: the serving lower graph's
    assert (reference * backbone.embed_deep(IMAGES, [None] * len(IMAGES)).vectors).sum(1).min() < 0.999


def test_image_unfreeze_params_that_do_not_fit(backbone):
    from adapters.pipeline import InvalidParams, unfreeze_params

    shape = backbone.split_shape
    with pytest.raises(InvalidParams, match=r"unfreezes at most its top 2 blocks \(GRAFT_IMAGE_SPLIT_BLOCKS\)"):
        unfreeze_params({"method": "unfreeze", "unfreeze_layers": 3}, shape)
    with pytest.raises(InvalidParams, match=r"over GRAFT_MAX_UNFREEZE_BYTES \(5\.0 MiB\): unfreeze at most 1 blocks"):
        unfreeze_params({"method": "unfreeze"}, shape, max_bytes=5 * 1024 * 1024)
    with pytest.raises(InvalidParams, match="use method head"):
        unfreeze_params({"method": "unfreeze", "unfreeze_layers": 1}, shape, max_bytes=1024 * 1024)
    assert unfreeze_params({"method": "unfreeze"}, shape).layers == 2


def test_the_format_checks_an_image_unfreeze_adapter(backbone):
    layers = random_layers(backbone, 1, 3)
    adapter = unfreeze_adapter(backbone, layers, 1, 3)
    tensors = dict(adapter.tensors)
    del tensors["layer.16._conv_head.weight"]
    with pytest.raises(AdapterFormatError, match=r"top 1 blocks carries layer.<15-16>.*head conv.*missing"):
        encode(adapter.config, tensors)
    bad = AdapterConfig(**{**adapter.config.__dict__, "unfreeze": {**adapter.config.unfreeze, "arch": "resnet"}})
    with pytest.raises(AdapterFormatError, match="known arch"):
        encode(bad, adapter.tensors)


def test_the_image_unfreeze_pipeline_trains_a_version_that_serves(backbone):
    from adapters.pipeline import InvalidParams, train_version
    from service.inference import Work, backbone_pass

    train = [{"image": base64.b64encode(png(1000 + 10 * i + k, shape=s)).decode(), "label": s}
             for i in range(6) for k, s in enumerate(LABELS)]
    held_out = [(jpeg(5000 + 10 * i + k, shape=s, size=(120, 90)), s) for i in range(3) for k, s in enumerate(LABELS)]
    report = Reporter()
    outcome = train_version(train, backbone, {"method": "unfreeze", "unfreeze_layers": 1, "epochs": 2, "augment": 1},
                            active=None, cache=NoCache(), report=report, promote_margin=0.01)
    config = outcome.config
    assert config.method == "unfreeze" and config.unfreeze == {
        "layers": 1, "split": 14, "backbone_layers": 16, "hidden": 1280, "arch": "efficientnet-lite0"}
    events = dict(report.events)
    assert events["augmentation"] == {"copies": 1, "train": 2 * config.training["train"]}
    assert events["hidden_states"]["computed"] == len(train) and [k for k, _ in report.events].count("epoch") >= 1
    adapter = decode(config.to_json(), outcome.weights, fingerprint=backbone.fingerprint, dim=backbone.dim, split=14)
    assert adapter.unfrozen.layers == [15, 16]
    size = backbone.split_shape.unfreeze_bytes(1)
    assert size < len(outcome.weights) < size + 64_000
    rows = backbone_pass(backbone, [Work(backbone.prepare(d), adapter) for d, _ in held_out])
    accuracy = np.mean([adapter.labels[int(r.scores.argmax())] == label for r, (_, label) in zip(rows, held_out)])
    assert accuracy >= 0.7, accuracy
    with pytest.raises(InvalidParams, match="an image backbone: use method head or unfreeze"):
        train_version(train, backbone, {"method": "lora"}, active=None, cache=NoCache(), report=Reporter(),
                      promote_margin=0.01)


def test_image_feature_maps_are_cached_per_tenant(backbone, tmp_path):
    """Through the tenant's cache in the registry database, as the worker passes it, under
    the image backbone's hidden_key: read back they equal what the lower graph computes."""
    from adapters.jobs import JobQueue
    from adapters.pipeline import hidden_cached
    from adapters.registry import Registry

    assert backbone.hidden_key == (f"{backbone.fingerprint}:b14:{backbone.split.lower.model_path.stem}:fp32")
    registry = Registry(f"sqlite:///{tmp_path}/registry.db")
    registry.create_tenant("acme")
    cache = JobQueue(registry).embedding_cache("acme")
    keys = [base64.b64encode(i).decode() for i in IMAGES[:5]]
    first, counts = hidden_cached(backbone, keys + keys[:2], cache, Reporter())
    assert counts == {"cached": 0, "computed": 5}
    second, counts = hidden_cached(backbone, keys, cache, Reporter())
    assert counts == {"cached": 5, "computed": 0}
    fresh = backbone.hidden_states(IMAGES[:5])
    for got, want in zip(second, fresh):
        assert got.shape == want.shape == (49, 192) and np.array_equal(got, want)
    registry.close()


def test_continual_image_unfreeze_starts_from_the_active_weights(backbone):
    """A continual unfreeze job on an image unfreeze version of the same blocks starts from its
    weights (at a learning rate that moves nothing, it ends where the active version was)."""
    import dataclasses

    from adapters.pipeline import train_version

    train = [{"image": base64.b64encode(png(2000 + 10 * i + k, shape=s)).decode(), "label": s}
             for i in range(5) for k, s in enumerate(LABELS)]
    active = dataclasses.replace(unfreeze_adapter(backbone, random_layers(backbone, 1, 5), 1, 5), version=1)
    outcome = train_version(train, backbone, {"method": "unfreeze", "unfreeze_layers": 1, "epochs": 1, "lr": 1e-12,
                                              "continual": True},
                            active=active, cache=NoCache(), report=Reporter(), promote_margin=0.01)
    assert outcome.config.training["weights_from_active"] is True and outcome.config.training["continual_from"] == 1
    after = decode(outcome.config.to_json(), outcome.weights, fingerprint=backbone.fingerprint, dim=backbone.dim,
                   split=14).unfrozen
    pretrained = backbone.split.upper_weights.pretrained
    for name, w in active.unfrozen.weights.items():
        assert np.abs(after.weights[name] - w).max() < 1e-6 and not np.allclose(w, pretrained[name], rtol=1e-3, atol=0)
