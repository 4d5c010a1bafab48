"""Turn a catalog name into a ready Backbone: resolve, build artifacts, open a session."""
from __future__ import annotations

import logging
from pathlib import Path

from typing import Any

from models.base import Backbone
from models.catalog import licence, resolve_spec
from models.export import ensure_artifact, prepared_only
from models.image import ImageBackbone, ImageLimits
from models.families import family_of_dir
from models.int8 import Int8Choice, choose_int8, choose_split, split_paths
from models.parity import check_reduced, check_split, check_whole, summary
from models.runtime import Lanes, OrtRunner, choose_provider, default_lanes, installed_runtime

log = logging.getLogger(__name__)


def default_precision(provider: str) -> str:
    return "fp16" if provider == "CUDAExecutionProvider" else "int8"


def load_backbone(name: str, home: Path, *, prepared: Path | None = None, **options: Any) -> Backbone:
    """`prepared` (GRAFT_PREPARED=required): the artifacts in `home` were built by `prepare`
    and are only read (nothing exported, no torch or transformers imported): a missing one
    raises models.export.ArtifactMissingError naming it and the command that builds it; the
    int8 gates of a CPU `prepare` did not run on are measured from the prepared graphs and kept
    under `prepared` (a writable directory). None: what is missing is built (the export extra).
    `options`: _load_backbone's."""
    with prepared_only(prepared):
        return _load_backbone(name, home, **options)


def check_prepared(names: list[str], home: Path, *, split_layers: int, image_split_blocks: int) -> None:
    """Before a GRAFT_PREPARED=required server starts: each backbone was prepared in `home`
    for these weights, this export code and this runtime, with the split settings this process
    serves; else ArtifactMissingError (what is missing or differs, and the command that builds
    it). Cheap: records only; a file missing inside a prepared folder fails its load the same way."""
    import json

    from models.export import ArtifactMissingError, prepare_command, prepared_index, prepared_key

    for name in names:
        spec = resolve_spec(name)
        prepared_key(spec, home)
        done = json.loads(prepared_index(spec, home).read_text()).get("prepared_with", {})
        if spec.kind == "text":
            setting, have = "GRAFT_SPLIT_LAYERS", int(done.get("split_layers", 0))
            want = spec.split_layers if spec.split_layers is not None else split_layers
            want = want if family_of_dir(spec.path).deep else 0
        else:
            setting, have = "GRAFT_IMAGE_SPLIT_BLOCKS", int(done.get("image_split_blocks", 0))
            want = 0 if spec.hf_image else image_split_blocks
        if want != have:
            raise ArtifactMissingError(
                f"backbone {spec.id!r} was prepared with {setting}={have} and this process serves {want} (other split "
                f"graphs): prepare it again with the serving settings: {prepare_command(spec, home)}")


def _load_backbone(
    name: str,
    home: Path,
    *,
    precision: str = "auto",
    provider: str = "auto",
    intra_op_threads: int = 0,
    image_limits: ImageLimits | None = None,
    split_layers: int = 0,
    image_split_blocks: int = 0,
    lanes: int | None = None,
) -> Backbone:
    """`split_layers`: text backbones also load their lower and upper graphs split below
    that many top layers, for deep (LoRA) adapters; 0: head-only. `image_split_blocks`: image
    backbones load their lower and upper_weights graphs split below that many top blocks, for
    unfreeze adapters (fp32; models/image_split.py); 0: head-only. A catalogue entry's
    `precision` and `split_layers` win over the arguments; a text family without split graphs
    (models/families.py) loads head-only and says why (`TextBackbone.deep_refusal`). Every
    fp32 text graph, and every graph of an image directory (models/hf_image.py; CLIP: its text
    tower too), passes the parity gate (models/parity.py) before it serves; image directories
    load head-only (`deep_refusal` says why where image_split_blocks asked for more). `lanes`:
    text backbones run the rows of a pass of several calls in that many single-threaded
    sessions side by side (models/runtime.py Lanes; None: `default_lanes`, 0 or 1: none)."""
    from models.split import DeepUnsupportedError, split_shape
    from models.text import SplitRunner, TextBackbone, UpperWeights

    spec = resolve_spec(name)
    ort_provider = choose_provider(provider)
    if spec.precision:  # the catalogue entry's precision policy wins over GRAFT_PRECISION
        precision = spec.precision
    chosen = default_precision(ort_provider) if precision == "auto" else precision
    parity: dict[str, Any] = {}
    if spec.kind == "text":
        # The parity gate: the fp32 graph (the int8 gate's reference too) against torch.
        parity["fp32"] = check_whole(spec, home, ensure_artifact(spec, "fp32", home))
    elif spec.hf_image:  # an image directory (models/hf_image.py): the same gate, on the calibration photos
        from models.parity import check_image

        parity["fp32"] = check_image(spec, home, ensure_artifact(spec, "fp32", home))
    int8: Int8Choice | None = None
    if chosen == "int8":
        # The gate may serve fp32 instead: int8 accuracy depends on this CPU's kernels.
        int8 = choose_int8(spec, home)
        model_path, chosen = int8.path, int8.precision
    else:
        model_path = ensure_artifact(spec, chosen, home)
        if chosen == "fp16" and (spec.kind == "text" or spec.hf_image):
            parity["fp16"] = check_reduced(spec, home, model_path)  # by cosine (models/parity.py FP16_BAR)
    runner = OrtRunner(model_path, ort_provider, chosen, intra_op_threads)
    backbone: Backbone
    if spec.kind == "image":
        image_split = None
        deep_refusal = None
        if image_split_blocks and spec.hf_image:
            deep_refusal = (f"backbone {spec.id!r} ({spec.family}) does not support deep adapters: image split "
                            "graphs (method unfreeze) exist for EfficientNet only; use method head")
            log.info("%s: head adapters only (%s)", spec.id, deep_refusal)
        elif image_split_blocks:
            from models.export import ensure_image_split
            from models.image_split import ImageSplitRunner, image_split_shape

            ishape = image_split_shape(spec.arch, image_split_blocks, spec.image_size)
            lower_path, upper_path, pretrained_path = ensure_image_split(spec, ishape, home)
            image_split = ImageSplitRunner(ishape, OrtRunner(lower_path, ort_provider, "fp32", intra_op_threads,
                                                             spinning=False),
                                           UpperWeights.load(ishape, upper_path, pretrained_path, ort_provider,
                                                             intra_op_threads))
        text_tower = None
        if spec.text_image:  # CLIP: the text tower, gated too, for zero-shot image adapters
            import json

            from models.export import ensure_text_tower
            from models.hf_image import TextTower
            from models.parity import check_text_tower

            tower_path, tower_meta = ensure_text_tower(spec, home)
            parity["text_tower"] = check_text_tower(spec, home, tower_path)
            text_tower = TextTower(spec, OrtRunner(tower_path, ort_provider, "fp32", intra_op_threads, spinning=False),
                                   float(json.loads(tower_meta.read_text())["logit_scale"]))
        backbone = ImageBackbone(spec, runner, image_limits, image_split, text_tower)
        backbone.deep_refusal = deep_refusal
    else:
        split = None
        deep_refusal = None
        if spec.split_layers is not None:  # the catalogue entry's split wins over GRAFT_SPLIT_LAYERS
            split_layers = spec.split_layers
        if split_layers and not family_of_dir(spec.path).deep:
            try:
                split_shape(spec, split_layers)
            except DeepUnsupportedError as e:
                deep_refusal = str(e)
                log.info("%s: head adapters only (%s)", spec.id, e)
            split_layers = 0
        if split_layers:
            from models.export import ensure_split, ensure_upper_weights

            shape = split_shape(spec, split_layers)
            fp32_lower, fp32_upper = ensure_split(spec, shape, home)
            parity.update(check_split(spec, home, shape, fp32_lower, fp32_upper, *ensure_upper_weights(spec, shape, home)))
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
        n = default_lanes(ort_provider, intra_op_threads) if lanes is None else lanes
        n = n if ort_provider == "CPUExecutionProvider" else 0  # a GPU takes the whole pass at once
        backbone = TextBackbone(spec, runner, split, Lanes(model_path, ort_provider, chosen, n) if n > 1 else None)
        backbone.deep_refusal = deep_refusal
    backbone.parity = summary(parity) if parity else None
    backbone.int8 = int8.describe() if int8 else None
    backbone.licence = licence(spec)
    log.info(
        "backbone %s ready: dim=%d provider=%s precision=%s runtime=%s fingerprint=%s",
        backbone.id, backbone.dim, backbone.provider, backbone.precision,
        installed_runtime(), backbone.fingerprint,
    )
    return backbone
