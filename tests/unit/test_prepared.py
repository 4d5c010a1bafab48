"""GRAFT_PREPARED=required at the model layer (models/export.py `prepared_only`): prepared
artifacts are found without the export libraries, checked against the weights and runtime,
never rebuilt; what is missing is named with the command that builds it; the int8 gates of
a CPU `prepare` did not run on are measured from the prepared graphs into the process's own
directory (tests/integration/test_prepared.py: the server, without torch)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from models.catalog import resolve_spec
from models.export import ArtifactMissingError, artifact_dir, prepared_index
from models.int8 import CpuFeatures
from models.loader import check_prepared, load_backbone
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def artifacts(graft_home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    r = subprocess.run([sys.executable, "-m", "service.cli", "prepare", "minilm-l6"], cwd=ROOT, capture_output=True,
                       text=True, timeout=1800, env={**env, "GRAFT_HOME": str(graft_home), "GRAFT_SPLIT_LAYERS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    return graft_home


def snapshot(folder):
    return sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())


def test_a_prepared_backbone_loads_without_building_anything(artifacts, tmp_path):
    spec = resolve_spec("minilm-l6")
    before = snapshot(artifact_dir(spec, artifacts))
    backbone = load_backbone("minilm-l6", artifacts, prepared=tmp_path, split_layers=2)
    assert backbone.split is not None and all(v["passed"] for v in backbone.parity.values())
    assert snapshot(artifact_dir(spec, artifacts)) == before
    assert not list(tmp_path.rglob("*.json"))  # this CPU's verdicts were prepared: none measured here


def test_other_split_settings_are_refused_with_the_command(artifacts, tmp_path):
    check_prepared(["minilm-l6"], artifacts, split_layers=2, image_split_blocks=0)
    with pytest.raises(ArtifactMissingError, match=r"prepared with GRAFT_SPLIT_LAYERS=2 and this process serves 3"):
        check_prepared(["minilm-l6"], artifacts, split_layers=3, image_split_blocks=0)
    # The load itself names the missing file (check_prepared reads records only).
    with pytest.raises(ArtifactMissingError) as e:
        load_backbone("minilm-l6", artifacts, prepared=tmp_path, split_layers=3)
    assert "lower-s3-v2.onnx is missing" in str(e.value) and "python -m service.cli prepare minilm-l6" in str(e.value)


def test_a_stale_record_is_refused(artifacts, tmp_path):
    """Prepared for other weights (or another runtime): refused, not served."""
    spec = resolve_spec("minilm-l6")
    home = tmp_path / "home"
    index = prepared_index(spec, home)
    index.parent.mkdir(parents=True)
    record = json.loads(prepared_index(spec, artifacts).read_text())
    index.write_text(json.dumps({**record, "fingerprint": "0" * 32}))
    with pytest.raises(ArtifactMissingError, match="was prepared from other weights"):
        check_prepared(["minilm-l6"], home, split_layers=2, image_split_blocks=0)
    index.write_text(json.dumps({**record, "runtime": {**record["runtime"], "onnxruntime": "0.0.1"}}))
    with pytest.raises(ArtifactMissingError, match="was prepared for .*0.0.1.*, this process runs"):
        load_backbone("minilm-l6", home, prepared=tmp_path)


def test_another_cpu_gates_itself_from_the_prepared_graphs(artifacts, tmp_path, monkeypatch):
    """A node whose CPU `prepare` never saw (here: AVX2 without VNNI) measures the int8 gates
    with ONNX Runtime on the prepared graphs and keeps the verdicts in its own directory."""
    import models.int8

    # AVX2 without VNNI, under a key of this test's own: a verdict another test measured for a
    # plain ("avx2",) CPU (test_split_precision) and left in the shared artifacts is not this one's.
    monkeypatch.setattr(models.int8, "cpu_features", lambda: CpuFeatures("x86_64", ("avx2", "prepared-test-cpu")))
    spec = resolve_spec("minilm-l6")
    before = snapshot(artifact_dir(spec, artifacts))
    backbone = load_backbone("minilm-l6", artifacts, prepared=tmp_path, split_layers=2)
    assert snapshot(artifact_dir(spec, artifacts)) == before
    assert backbone.int8["cpu"] == "x86_64 [avx2 prepared-test-cpu]"
    assert set(backbone.int8["measured"]) == {"smoothquant-u8u8"}
    verdicts = sorted(p.name for p in tmp_path.rglob("*gate*.json"))
    assert len(verdicts) == 2 and verdicts[0].startswith("int8-gate-x86_64-"), verdicts  # whole graph, split graphs
    assert backbone.split.gate["cpu"] == "x86_64 [avx2 prepared-test-cpu]"


def test_check_prepared_is_what_an_init_container_waits_on(artifacts, tmp_path):
    """`python -m service.cli check-prepared`, without torch (as in the serving image): 3 and
    what is missing until the backbones are prepared for these settings, then 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    env |= {"PYTHONPATH": str(ROOT / "tests" / "integration" / "no_torch"), "GRAFT_BACKBONES": '["minilm-l6"]',
            "GRAFT_SPLIT_LAYERS": "2", "GRAFT_HOME": str(tmp_path / "home")}

    def check(folder):
        return subprocess.run([sys.executable, "-m", "service.cli", "check-prepared"], cwd=ROOT, capture_output=True,
                              text=True, timeout=300, env={**env, "GRAFT_ARTIFACTS": str(folder)})

    missing = check(tmp_path / "empty")
    assert missing.returncode == 3
    assert "'minilm-l6' is not prepared" in missing.stderr and "python -m service.cli prepare minilm-l6" in missing.stderr
    ready = check(artifacts)
    assert ready.returncode == 0, ready.stderr[-2000:]
    assert "minilm-l6" in ready.stdout
