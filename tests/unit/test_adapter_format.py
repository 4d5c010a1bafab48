"""Adapter format: round trip, and every mismatch refused with a clear error."""
from __future__ import annotations

import numpy as np
import pytest

from adapters import zero_shot
from adapters.format import AdapterConfig, AdapterFormatError, decode, encode, read_dir, write_dir

FP = "f" * 32


def linear(dim: int = 8, labels=("a", "b", "c")) -> tuple[AdapterConfig, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    config = AdapterConfig(backbone="minilm-l6", fingerprint=FP, dim=dim, head="linear", labels=list(labels),
                           metrics={"macro_f1": 0.9}, training={"method": "test"}, parent_version=3)
    return config, {"weight": rng.normal(size=(len(labels), dim)).astype(np.float32),
                    "bias": rng.normal(size=len(labels)).astype(np.float32)}


def test_round_trip_through_disk(tmp_path):
    config, tensors = linear()
    sealed, weights = encode(config, tensors)
    assert len(sealed.weights_sha256) == 64
    write_dir(tmp_path / "v1", sealed, weights)
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == ["config.json", "head.safetensors"]
    adapter = decode(*read_dir(tmp_path / "v1"), fingerprint=FP, dim=8, version=1)
    assert adapter.config == sealed and adapter.version == 1
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    expected = x @ tensors["weight"].T + tensors["bias"]
    probs = adapter.predict_proba(x)
    assert np.allclose(probs.sum(1), 1) and (probs.argmax(1) == expected.argmax(1)).all()


def test_mlp_head_round_trip():
    rng = np.random.default_rng(2)
    config = AdapterConfig(backbone="minilm-l6", fingerprint=FP, dim=8, head="mlp", labels=["x", "y"])
    tensors = {"w1": rng.normal(size=(16, 8)), "b1": rng.normal(size=16), "w2": rng.normal(size=(2, 16)), "b2": np.zeros(2)}
    sealed, weights = encode(config, tensors)
    adapter = decode(sealed.to_json(), weights, fingerprint=FP, dim=8)
    assert adapter.predict_proba(np.ones((3, 8), dtype=np.float32)).shape == (3, 2)


def test_weights_are_safetensors_not_pickle():
    sealed, weights = encode(*linear())
    header_len = int.from_bytes(weights[:8], "little")
    assert weights[8:9] == b"{" and b"weight" in weights[8 : 8 + header_len]


def test_checksum_mismatch_refused():
    sealed, weights = encode(*linear())
    tampered = bytearray(weights)
    tampered[-1] ^= 0xFF
    with pytest.raises(AdapterFormatError, match="checksum"):
        decode(sealed.to_json(), bytes(tampered), fingerprint=FP, dim=8)


def test_fingerprint_mismatch_refused():
    sealed, weights = encode(*linear())
    with pytest.raises(AdapterFormatError, match="fingerprint"):
        decode(sealed.to_json(), weights, fingerprint="0" * 32, dim=8)


def test_dim_mismatch_refused():
    sealed, weights = encode(*linear())
    with pytest.raises(AdapterFormatError, match="8-d"):
        decode(sealed.to_json(), weights, fingerprint=FP, dim=384)


def test_wrong_shapes_refused_with_the_fix():
    config, tensors = linear()
    tensors["weight"] = tensors["weight"][:2]
    with pytest.raises(AdapterFormatError, match="expected"):
        encode(config, tensors)


@pytest.mark.parametrize("raw", [b"not json", b"{}", b'{"backbone": 1}'])
def test_broken_config_refused(raw):
    with pytest.raises(AdapterFormatError):
        decode(raw, b"", fingerprint=FP, dim=8)


def test_zero_shot_head_picks_the_nearest_label():
    labels = ["refund", "shipping"]
    vectors = np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32)
    config, tensors = zero_shot.build("bb", FP, labels, vectors)
    sealed, weights = encode(config, tensors)
    adapter = decode(sealed.to_json(), weights, fingerprint=FP, dim=3)
    probs = adapter.predict_proba(np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.1]], dtype=np.float32))
    assert probs.argmax(1).tolist() == [0, 1] and probs.max() > 0.9


@pytest.mark.parametrize(
    "labels,descriptions,needle",
    [
        ([], None, "at least 2"),
        (["only"], None, "at least 2"),
        (["a", "a"], None, "twice"),
        (["a", " "], None, "empty"),
        (["a", "b"], {"c": "x"}, "not one of the labels"),
        (["a", "b"], {"a": ""}, "empty"),
    ],
)
def test_bad_label_sets_refused(labels, descriptions, needle):
    with pytest.raises(zero_shot.LabelError, match=needle):
        zero_shot.check_labels(labels, descriptions)


def unfreeze_adapter(layers: int = 1) -> tuple[AdapterConfig, dict[str, np.ndarray]]:
    """An unfreeze adapter of the top `layers` of a small 3-layer backbone split at layer 1."""
    from models.split import SplitShape

    shape = SplitShape(layers=3, split=1, hidden=8, intermediate=16)
    config, tensors = linear()
    rng = np.random.default_rng(3)
    for layer in range(3 - layers, 3):
        for path, size in shape.layer_params().items():
            tensors[f"layer.{layer}.{path}"] = rng.normal(size=size).astype(np.float32)
    recipe = {"layers": layers, "split": 1, "backbone_layers": 3, "hidden": 8, "intermediate": 16}
    return AdapterConfig(**{**config.__dict__, "method": "unfreeze", "unfreeze": recipe}), tensors


def test_unfreeze_adapter_round_trip():
    config, tensors = unfreeze_adapter()
    sealed, weights = encode(config, tensors)
    adapter = decode(sealed.to_json(), weights, fingerprint=FP, dim=8, split=1)
    assert adapter.unfrozen is not None and adapter.unfrozen.layers == [2] and adapter.lora is None
    assert adapter.deep is adapter.unfrozen
    assert np.array_equal(adapter.unfrozen.weights["2.output.dense.weight"], tensors["layer.2.output.dense.weight"])
    assert adapter.nbytes >= adapter.unfrozen.nbytes  # the cache counts the layers' bytes
    with pytest.raises(AdapterFormatError, match="split at layer 2"):
        decode(sealed.to_json(), weights, fingerprint=FP, dim=8, split=2)
    with pytest.raises(AdapterFormatError, match="needs a split backbone"):
        decode(sealed.to_json(), weights, fingerprint=FP, dim=8)


@pytest.mark.parametrize("change, needle", [
    (lambda t: t.update({"layer.2.attention.self.gate.weight": np.zeros((8, 8), np.float32)}), "unknown"),
    (lambda t: t.pop("layer.2.output.LayerNorm.bias"), "missing"),
    (lambda t: t.update({"layer.0.output.dense.bias": np.zeros(8, np.float32)}), "unknown"),  # below the split
    (lambda t: t.update({"layer.2.intermediate.dense.weight": np.zeros((8, 8), np.float32)}), "expected (16, 8)"),
    (lambda t: t.update({"lora_a.2.output.dense": np.zeros((16, 2), np.float32)}), "no LoRA factors"),
])
def test_bad_unfreeze_weights_are_refused(change, needle):
    config, tensors = unfreeze_adapter()
    change(tensors)
    with pytest.raises(AdapterFormatError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        encode(config, tensors)


def test_unfreeze_settings_must_fit_the_split():
    config, tensors = unfreeze_adapter()
    too_many = AdapterConfig(**{**config.__dict__, "unfreeze": {**config.unfreeze, "layers": 3}})
    with pytest.raises(AdapterFormatError, match="1 to 2 top layers"):
        encode(too_many, tensors)
    head = AdapterConfig(**{**config.__dict__, "method": "head", "unfreeze": None})
    with pytest.raises(AdapterFormatError, match="carries no layer weights"):
        encode(head, tensors)
