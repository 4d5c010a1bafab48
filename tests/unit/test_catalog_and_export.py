"""Catalog resolution, fingerprints, artifact keys and atomic artifact writes."""
from __future__ import annotations

import dataclasses

import pytest

from models import export
from models.catalog import UnknownBackboneError, resolve_spec


def test_catalog_id_resolves_to_bundled_weights(minilm_spec):
    assert minilm_spec.id == "minilm-l6"
    assert (minilm_spec.path / "model.safetensors").is_file()
    assert minilm_spec.max_tokens == 256 and minilm_spec.pooling == "mean"


def test_local_hf_directory_is_accepted_by_path(minilm_spec):
    spec = resolve_spec(str(minilm_spec.path))
    assert spec.path == minilm_spec.path
    # Same weights and preprocessing: same identity, same artifacts.
    assert spec.fingerprint == minilm_spec.fingerprint
    assert export.artifact_key(spec) == export.artifact_key(minilm_spec)


@pytest.mark.parametrize("name", ["nope", "/definitely/not/here", "", "../.."])
def test_unknown_backbone_is_refused_with_the_choices(name):
    with pytest.raises(UnknownBackboneError, match="minilm-l6"):
        resolve_spec(name)


def test_fingerprint_tracks_preprocessing(minilm_spec):
    other = dataclasses.replace(minilm_spec, pooling="cls")
    assert other.fingerprint != minilm_spec.fingerprint
    assert len(minilm_spec.fingerprint) == 32


def test_artifact_key_tracks_settings_and_versions(minilm_spec, monkeypatch):
    key = export.artifact_key(minilm_spec)
    monkeypatch.setitem(export.EXPORT_SETTINGS, "opset", 18)
    assert export.artifact_key(minilm_spec) != key
    monkeypatch.undo()
    monkeypatch.setattr(export, "library_versions", lambda: {"onnxruntime": "0.0.1"})
    assert export.artifact_key(minilm_spec) != key


def test_failed_build_leaves_no_artifact(minilm_spec, tmp_path, monkeypatch):
    def broken_export(spec, out):
        out.write_bytes(b"half a model")
        raise RuntimeError("killed mid-export")

    monkeypatch.setattr(export, "export_onnx", broken_export)
    with pytest.raises(RuntimeError):
        export.ensure_artifact(minilm_spec, "fp32", tmp_path)
    folder = export.artifact_dir(minilm_spec, tmp_path)
    assert not any(p.suffix == ".onnx" for p in folder.iterdir())


def test_existing_artifact_is_reused(minilm_spec, graft_home, monkeypatch):
    first = export.ensure_artifact(minilm_spec, "fp32", graft_home)
    monkeypatch.setattr(export, "_build", lambda *a: pytest.fail("rebuilt a cached artifact"))
    assert export.ensure_artifact(minilm_spec, "fp32", graft_home) == first


def test_unknown_precision_is_refused(minilm_spec, tmp_path):
    with pytest.raises(ValueError, match="fp32"):
        export.ensure_artifact(minilm_spec, "int4", tmp_path)
    with pytest.raises(ValueError, match="choose_int8"):
        export.ensure_artifact(minilm_spec, "int8", tmp_path)
