"""A GRAFT_HOME with deliberately bad int8 graphs, for the tests of the int8 gate."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from models import int8
from models.export import artifact_dir


def home_with_bad_int8(spec, graft_home: Path, tmp_path: Path) -> Path:
    """A GRAFT_HOME whose int8 graphs are deliberately miscalibrated (each weight channel's
    scale off by up to 50%, as a broken quantizer would give) and which has no verdict yet."""
    source = artifact_dir(spec, graft_home)
    for name in int8.candidates(spec.kind, int8.cpu_features()):
        int8.ensure_int8(spec, name, graft_home)
    target = artifact_dir(spec, tmp_path)
    target.parent.mkdir(parents=True)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("int8-gate-*", ".lock", "fp16.onnx"))
    rng = np.random.default_rng(0)
    for path in target.glob("int8-*.onnx"):
        model = onnx.load(str(path))
        for init in model.graph.initializer:
            if init.name.endswith("_scale"):  # weight scales (activation scales are dynamic)
                scale = numpy_helper.to_array(init)
                wrong = scale * rng.uniform(0.5, 1.5, scale.shape).astype(scale.dtype)
                init.CopyFrom(numpy_helper.from_array(wrong, init.name))
        onnx.save(model, str(path))
    return tmp_path
