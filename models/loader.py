"""Turn a catalog name into a ready Backbone: resolve, build artifacts, open a session."""
from __future__ import annotations

import logging
from pathlib import Path

from models.base import Backbone
from models.catalog import licence, resolve_spec
from models.export import ensure_artifact
from models.image import ImageBackbone, ImageLimits
from models.int8 import Int8Choice, choose_int8, choose_split, split_paths
from models.runtime import OrtRunner, choose_provider, installed_runtime

log = logging.getLogger(__name__)


def default_precision(provider: str) -> str:
    return "fp16" if provider == "CUDAExecutionProvider" else "int8"


def load_backbone(
    name: str,
    home: Path,
    *,
    precision: str = "auto",
    provider: str = "auto",
    intra_op_threads: int = 0,
    image_limits: ImageLimits | None = None,
    split_layers: int = 0,
    image_split_blocks: int = 0,
) -> Backbone:
    """`split_layers`: text backbones also load their lower and upper graphs split below
    that many top layers, for deep (LoRA) adapters; 0: head-only. `image_split_blocks`: image
    backbones load their lower and upper_weights graphs split below that many top blocks, for
    unfreeze adapters (fp32; models/image_split.py); 0: head-only."""
    from models.text import SplitRunner, TextBackbone, UpperWeights

    spec = resolve_spec(name)
    ort_provider = choose_provider(provider)
    chosen = default_precision(ort_provider) if precision == "auto" else precision
    int8: Int8Choice | None = None
    if chosen == "int8":
        # The gate may serve fp32 instead: int8 accuracy depends on this CPU's kernels.
        int8 = choose_int8(spec, home)
        model_path, chosen = int8.path, int8.precision
    else:
        model_path = ensure_artifact(spec, chosen, home)
    runner = OrtRunner(model_path, ort_provider, chosen, intra_op_threads)
    backbone: Backbone
    if spec.kind == "image":
        image_split = None
        if image_split_blocks:
            from models.export import ensure_image_split
            from models.image_split import ImageSplitRunner, image_split_shape

            ishape = image_split_shape(spec.arch, image_split_blocks, spec.image_size)
            lower_path, upper_path, pretrained_path = ensure_image_split(spec, ishape, home)
            image_split = ImageSplitRunner(ishape, OrtRunner(lower_path, ort_provider, "fp32", intra_op_threads,
                                                             spinning=False),
                                           UpperWeights.load(ishape, upper_path, pretrained_path, ort_provider,
                                                             intra_op_threads))
        backbone = ImageBackbone(spec, runner, image_limits, image_split)
    else:
        split = None
        if split_layers:
            from models.export import ensure_split, ensure_upper_weights
            from models.split import split_shape

            shape = split_shape(spec, split_layers)
            fp32_lower, fp32_upper = ensure_split(spec, shape, home)
            # int8 asked for: the split graphs have their own gate (per-token int8, or fp32).
            gate = choose_split(spec, shape, home) if int8 is not None else None
            int8_split = gate is not None and gate.recipe is not None
            lower, upper = split_paths(fp32_lower, fp32_upper, gate.recipe) if int8_split else (fp32_lower, fp32_upper)
            precision = "int8" if int8_split else "fp32"
            # The split graphs run in turn (lower, upper, upper_weights): their threads do not
            # spin between calls (OrtRunner).
            split = SplitRunner(shape, OrtRunner(lower, ort_provider, precision, intra_op_threads, spinning=False),
                                OrtRunner(upper, ort_provider, precision, intra_op_threads, spinning=False),
                                UpperWeights.load(shape, *ensure_upper_weights(spec, shape, home), ort_provider,
                                                  intra_op_threads))
            split.gate = gate.describe() if gate else None
            split.fp32_lower = fp32_lower if int8_split else None  # deep adapters train on fp32 states
        backbone = TextBackbone(spec, runner, split)
    backbone.int8 = int8.describe() if int8 else None
    backbone.licence = licence(spec)
    log.info(
        "backbone %s ready: dim=%d provider=%s precision=%s runtime=%s fingerprint=%s",
        backbone.id, backbone.dim, backbone.provider, backbone.precision,
        installed_runtime(), backbone.fingerprint,
    )
    return backbone
