"""ONNX Runtime sessions: provider choice (CUDA when present, else CPU) and I/O binding."""
from __future__ import annotations

import logging
from importlib import metadata
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def installed_runtime() -> str:
    """Which ONNX Runtime distribution is installed; both at once overwrite each other."""
    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
            found.append(dist)
        except metadata.PackageNotFoundError:
            continue
    if len(found) > 1:
        log.error(
            "both onnxruntime and onnxruntime-gpu are installed; they overwrite each other's "
            "files. Reinstall exactly one (`pip uninstall -y onnxruntime onnxruntime-gpu`, "
            "then `make install` or `make install GPU=1`)"
        )
    return found[0] if found else "none"


def cuda_available() -> bool:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    # The provider is compiled in; is there a device behind it?
    return _cuda_device_count() > 0


def _cuda_device_count() -> int:
    """Devices the NVIDIA driver sees (0 without a driver), asked without loading torch."""
    import ctypes

    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return count.value
    return 0


def choose_provider(requested: str) -> str:
    """'auto' picks CUDA when onnxruntime-gpu and a GPU are present, else CPU."""
    if requested == "cpu":
        return "CPUExecutionProvider"
    if requested == "cuda":
        if not cuda_available():
            raise RuntimeError(
                "GRAFT_PROVIDER=cuda but CUDA is not usable: install the `gpu` extra "
                "(onnxruntime-gpu) on a machine with an NVIDIA GPU, or set GRAFT_PROVIDER=auto"
            )
        return "CUDAExecutionProvider"
    return "CUDAExecutionProvider" if cuda_available() else "CPUExecutionProvider"


class OrtRunner:
    """One inference session over a graph with one output (the embeddings)."""

    def __init__(self, model_path: Path, provider: str, precision: str, intra_op_threads: int = 0,
                 spinning: bool = True) -> None:
        """`spinning` False: the session's threads sleep between calls instead of spin-waiting
        (ORT's default): for sessions called in turn with others (a split backbone's graphs),
        whose spinning threads would take the cores from the next graph's
        (docs/BENCHMARKS.md, deep adapters). True: they spin-wait within a call and stop when
        it returns (`session.force_spinning_stop`): spinning on after a lone text's call took a
        core from the event loop sending its answer (docs/BENCHMARKS.md, the latency path)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        else:  # spin within a call only: a thread spinning after it took a core from the HTTP path
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(model_path), opts, providers=providers)
        self.provider = self.session.get_providers()[0]
        self.precision = precision
        self.model_path = model_path
        self._use_binding = self.provider == "CUDAExecutionProvider"
        self._output = self.session.get_outputs()[0].name
        self._inputs = [i.name for i in self.session.get_inputs()]
        log.info("ORT session %s on %s (%s)", model_path.name, self.provider, precision)

    def run(self, *arrays: np.ndarray) -> np.ndarray:
        """The embeddings for the graph's inputs, given in the graph's order
        (text: input_ids, attention_mask; image: pixels)."""
        feeds = dict(zip(self._inputs, arrays, strict=True))
        if not self._use_binding:
            out = self.session.run([self._output], feeds)
            return np.asarray(out[0], dtype=np.float32)
        # On CUDA, bind inputs once (one host->device copy each) and let ORT allocate the
        # output on the device; only the pooled embeddings come back to the host.
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.bind_output(self._output, "cuda")
        self.session.run_with_iobinding(binding)
        return np.asarray(binding.copy_outputs_to_cpu()[0], dtype=np.float32)


class Lanes:
    """The rows of one pass spread over `n` single-threaded sessions of the same graph, each
    lane running its share in its own thread: on a 2-core CPU, int8 MiniLM row by row gave
    622-642 rows/s in two lanes against 381-446 from one session with two threads
    (docs/BENCHMARKS.md, the latency path). Small per-row graphs leave a session's threads
    waiting on each other; two rows side by side keep both cores busy. A pass of one call
    does not come here: it keeps the multi-threaded session, the lower latency for one row."""

    def __init__(self, model_path: Path, provider: str, precision: str, n: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.runners = [OrtRunner(model_path, provider, precision, intra_op_threads=1) for _ in range(n)]
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="ort-lane")

    def __len__(self) -> int:
        return len(self.runners)

    def run_all(self, calls: list[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        """Each call's output, in order; call i runs in lane i mod n (calls sorted by length
        share the long ones out evenly), each lane's calls one after another."""
        n = len(self.runners)

        def lane(k: int) -> list[np.ndarray]:
            return [self.runners[k].run(*calls[i]) for i in range(k, len(calls), n)]

        results = list(self._pool.map(lane, range(min(n, len(calls)))))
        return [results[i % n][i // n] for i in range(len(calls))]


def default_lanes(provider: str, intra_op_threads: int) -> int:
    """GRAFT_ORT_LANES 0 (auto): on CPU one lane per core the process may use, at most 4 (two
    measured best on 2 cores), and none when GRAFT_INTRA_OP_THREADS is 1 (a session already
    has one core) or on CUDA."""
    import os

    if provider != "CPUExecutionProvider" or intra_op_threads == 1:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    cores = min(cores, intra_op_threads) if intra_op_threads else cores
    return min(cores, 4) if cores > 1 else 0
