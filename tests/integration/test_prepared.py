"""Artifacts built once (issue 19): `python -m service.cli prepare` builds every backbone
artifact; a server with GRAFT_PREPARED=required only reads them, from a directory it may not
write (GRAFT_ARTIFACTS, a read-only volume in k8s/), in a process where torch and
transformers cannot be imported (tests/integration/no_torch: the serving image has neither),
and serves embeddings and head adapters; a trainer process (with torch, the `export` and
`train` extras) fine-tunes against the same registry. Without prepared artifacts the server
refuses to start, naming what is missing and the command that builds it."""
from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images import png
from tests.integration.data import split
from tests.integration.helpers import held_out_accuracy
from tests.integration.jobs import wait_job
from tests.integration.server import SIGNING_KEY, Server
from tests.conftest import ROOT

NO_TORCH = Path(__file__).with_name("no_torch")
SERVING = {"GRAFT_SPLIT_LAYERS": "2", "GRAFT_IMAGE_SPLIT_BLOCKS": "2", "GRAFT_PRECISION": "auto",
           "GRAFT_PROVIDER": "auto", "GRAFT_BACKBONES": '["minilm-l6", "efficientnet-lite0"]'}
TRAIN, HELD_OUT = split()


def clean_env(**env: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_") and k != "PYTHONPATH"}
    return {**base, **SERVING, **env}


@pytest.fixture(scope="module")
def artifacts(graft_home) -> Path:
    """`prepare` with the serving settings into the session's artifact cache (quick where the
    graphs are built already; it records them for GRAFT_PREPARED=required)."""
    r = subprocess.run([sys.executable, "-m", "service.cli", "prepare"], cwd=ROOT, capture_output=True, text=True,
                       env=clean_env(GRAFT_HOME=str(graft_home)), timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("minilm-l6", "efficientnet-lite0"):
        assert f"{name}: prepared in" in r.stdout, r.stdout
        assert (graft_home / "backbones" / "prepared" / f"{name}.json").is_file()
    return graft_home


def no_torch_server(tmp_path: Path, artifacts: Path, **env: str) -> Server:
    """A server that may not import torch or transformers nor write under `artifacts`."""
    return Server(tmp_path / "home", tmp_path / "server.log", **clean_env(
        GRAFT_ARTIFACTS=str(artifacts), GRAFT_PREPARED="required", GRAFT_TRAIN_WORKERS="0",
        GRAFT_DATABASE_URL=f"sqlite:///{tmp_path}/registry.db",
        PYTHONPATH=f"{NO_TORCH}{os.pathsep}{ROOT}", GRAFT_TEST_NO_TORCH_LOG=str(tmp_path / "no_torch.log"),
        GRAFT_TEST_READONLY=str(artifacts), **env))


def test_the_blocker_blocks(tmp_path):
    """Guards the guard: under no_torch, torch and transformers are not importable (nor found
    by importlib.util.find_spec), and a write under GRAFT_TEST_READONLY fails."""
    code = ("import importlib.util\n"
            "for m in ('torch', 'transformers', 'peft', 'efficientnet_lite_pytorch'):\n"
            "    assert importlib.util.find_spec(m) is None, m\n"
            "    try:\n"
            "        __import__(m)\n"
            "    except ImportError:\n"
            "        pass\n"
            "    else:\n"
            "        raise AssertionError(m)\n"
            f"try:\n    open({str(tmp_path / 'ro' / 'x')!r}, 'w')\nexcept OSError as e:\n    assert e.errno == 30\n"
            "else:\n    raise AssertionError('wrote')\n")
    (tmp_path / "ro").mkdir()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(NO_TORCH), "GRAFT_TEST_READONLY": str(tmp_path / "ro")})
    assert r.returncode == 0, r.stderr


def as_in_the_image(artifacts: Path, into: Path) -> Path:
    """The artifacts as the serving image holds them: deploy/prepare-artifacts.sh deletes the
    exporter's raw.onnx graphs after `prepare` (hard links: no copy of the graphs)."""
    import shutil

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system
            shutil.copy2(src, dst)

    shutil.copytree(artifacts / "backbones", into / "backbones", copy_function=link,
                    ignore=shutil.ignore_patterns(".lock"))
    assert "find \"$GRAFT_ARTIFACTS\" -name raw.onnx -delete" in (ROOT / "deploy/prepare-artifacts.sh").read_text()
    raw = list(into.rglob("raw.onnx"))
    assert raw
    for path in raw:
        path.unlink()
    return into


def test_serves_prepared_artifacts_without_torch_and_a_trainer_fine_tunes(artifacts, tmp_path):
    srv = no_torch_server(tmp_path, as_in_the_image(artifacts, tmp_path / "image-artifacts")).start(timeout=300)
    trainer = None
    try:
        with srv.client() as c:
            ready = c.get("/readyz").json()
            assert ready["status"] == "ready", ready
            by_id = {b["id"]: b for b in ready["backbones"]}
            assert set(by_id) == {"minilm-l6", "efficientnet-lite0"}
            assert all(v["passed"] for v in by_id["minilm-l6"]["parity_gate"].values())  # the verdicts prepare kept

            r = c.post("/v1/embed", json={"inputs": ["a prepared backbone", "no torch here"]})
            assert r.status_code == 200, r.text
            assert len(r.json()["embeddings"][0]) == 384
            image = base64.b64encode(png(1)).decode()
            r = c.post("/v1/embed", json={"backbone": "efficientnet-lite0", "inputs": [{"image": image}]})
            assert r.status_code == 200, r.text
            assert len(r.json()["embeddings"][0]) == 1280

            tenant = "prepared-" + os.urandom(4).hex()
            assert c.post("/v1/tenants", json={"tenant": tenant}).status_code == 201
            assert c.post("/v1/adapters", json={"tenant": tenant, "adapter": "zero",
                                                "labels": ["billing", "delivery"]}).status_code == 201
            r = c.post("/v1/predict", json={"tenant": tenant, "adapter": "zero", "inputs": ["refund my payment"]})
            assert r.status_code == 200 and r.json()["predictions"][0]["label"] == "billing", r.text

            # Training runs elsewhere (the trainer Deployment: torch, the export and train
            # extras), on the same registry and the same prepared artifacts.
            trainer = subprocess.Popen(
                [sys.executable, "-m", "service.worker"], cwd=ROOT, stdout=(tmp_path / "trainer.log").open("wb"),
                stderr=subprocess.STDOUT, env=clean_env(
                    GRAFT_HOME=str(tmp_path / "trainer"), GRAFT_ARTIFACTS=str(artifacts), GRAFT_PREPARED="required",
                    GRAFT_DATABASE_URL=srv.database_url, GRAFT_SIGNING_KEY=SIGNING_KEY, GRAFT_JOB_POLL_MS="100",
                    GRAFT_TRAIN_METRICS_PORT="0"))
            job = c.post("/v1/finetune", json={"tenant": tenant, "adapter": "tickets", "examples": TRAIN,
                                               "params": {"method": "head"}})
            assert job.status_code == 202, job.text
            done = wait_job(c, job.json()["job_id"], timeout=300)
            assert done["status"] == "succeeded", (done, (tmp_path / "trainer.log").read_text()[-3000:])
            # The trained head serves here and beats the zero-shot adapter of the same labels
            # (team codes: their names tell the encoder nothing), as in test_finetune.
            assert c.post("/v1/adapters", json={"tenant": tenant, "adapter": "zs",
                                                "labels": ["team-1", "team-2", "team-3"]}).status_code == 201
            tuned, predictions = held_out_accuracy(c, tenant, "tickets", HELD_OUT)
            zero, _ = held_out_accuracy(c, tenant, "zs", HELD_OUT)
            assert tuned > zero, (tuned, zero)
    finally:
        if trainer is not None:
            trainer.send_signal(signal.SIGTERM)
            trainer.wait(60)
        srv.stop()
    log = (tmp_path / "no_torch.log").read_text().splitlines()
    assert not [line for line in log if line.startswith(tuple(f"{w} " for w in (
        "write", "replace", "rename", "mkdir", "unlink", "remove", "rmdir")))], log  # nothing written
    assert len(log) >= 2, log  # the server and its worker both ran under the blocker


def test_without_prepared_artifacts_the_server_refuses_to_start(tmp_path):
    empty = tmp_path / "artifacts"
    empty.mkdir()
    srv = no_torch_server(tmp_path, empty)
    try:
        with pytest.raises(RuntimeError, match="server exited"):
            srv.start(timeout=120, ready=False)
        log = srv.log_path.read_text()
        assert "backbone 'minilm-l6' is not prepared in" in log, log[-3000:]
        assert f"{empty}/backbones/prepared/minilm-l6.json is missing" in log
        assert "GRAFT_PREPARED=required" in log
        assert f"GRAFT_HOME={empty} python -m service.cli prepare minilm-l6" in log
        assert not (empty / "backbones").exists()  # nothing exported
    finally:
        srv.stop()
