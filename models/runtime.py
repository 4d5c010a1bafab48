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
        (docs/BENCHMARKS.md, deep adapters)."""
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
