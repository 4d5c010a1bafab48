"""Split-point image backbones: EfficientNet-Lite cut at a block boundary, so that unfreeze
adapters (the last blocks and the head conv trained in full) serve many tenants on one
backbone, as models/split.py does for text.

A block is one MBConv block of the CNN (`EfficientNet._blocks`: a 1x1 expansion conv, a
depthwise conv and a 1x1 projection conv, each followed by batch norm, and a residual add
where the shapes allow). EfficientNet-Lite0 has 16 blocks in 7 stages; after the last block
come the head conv (1x1 to 1280 channels, batch norm, ReLU6) and global average pooling.

    lower: pixels (B, S, S, 3) uint8 -> hidden (B, H*W, C)       scaling, stem, blocks [0, split)
    upper_weights: hidden, <unit>.<param path> (every parameter of blocks [split, n) and of the
           head conv, unit n; no batch axis) -> embeddings (B, D), pooled and L2-normalised

An unfreeze adapter of the top k blocks trains and carries blocks [n - k, n) and the head conv
(unit n); the blocks of the upper graph below them stay pretrained. The lower feature map
travels as (positions, channels), the layout of text hidden states, so the hidden-state cache
and the shared training loop (adapters/deep.py) take it as it is. Both graphs are fp32 (the
path of deep rows only: head-only rows keep the whole graph at the served precision). Batch
norms keep their pretrained statistics: constants of the graph, and training leaves them in
inference mode (their scale and shift train).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.catalog import BackboneSpec
from models.runtime import OrtRunner
from models.split import SPLIT_SETTINGS, UnfrozenLayers

# Bump when the export below changes what it writes (the files are named by it).
IMAGE_SPLIT_SETTINGS: dict[str, Any] = {"format": 1, "opset": SPLIT_SETTINGS["opset"]}

# EfficientNet-Lite's stages (the TensorFlow builder's block strings, as efficientnet_lite_pytorch
# decodes them): r repeats, k kernel, s stride, e expansion, i/o channels. Lite0 scales neither
# width nor depth; its stem (32) and head (1280) are fixed. Pure Python: the API process
# checks adapters against these shapes without importing torch.
_STAGES = {
    "efficientnet-lite0": ("r1_k3_s11_e1_i32_o16", "r2_k3_s22_e6_i16_o24", "r2_k5_s22_e6_i24_o40",
                           "r3_k3_s22_e6_i40_o80", "r3_k5_s11_e6_i80_o112", "r4_k5_s22_e6_i112_o192",
                           "r1_k3_s11_e6_i192_o320"),
}
_IMAGE_SIZE = {"efficientnet-lite0": 224}
HEAD_CHANNELS = 1280


@dataclass(frozen=True)
class Block:
    inputs: int
    outputs: int
    kernel: int
    stride: int
    expand: int

    def params(self) -> dict[str, tuple[int, ...]]:
        """Every parameter of the MBConv block, by its path inside MBConvBlock."""
        mid = self.inputs * self.expand
        out: dict[str, tuple[int, ...]] = {}
        if self.expand != 1:
            out["_expand_conv.weight"] = (mid, self.inputs, 1, 1)
            out["_bn0.weight"], out["_bn0.bias"] = (mid,), (mid,)
        out["_depthwise_conv.weight"] = (mid, 1, self.kernel, self.kernel)
        out["_bn1.weight"], out["_bn1.bias"] = (mid,), (mid,)
        out["_project_conv.weight"] = (self.outputs, mid, 1, 1)
        out["_bn2.weight"], out["_bn2.bias"] = (self.outputs,), (self.outputs,)
        return out


@lru_cache(maxsize=None)
def lite_blocks(arch: str) -> tuple[Block, ...]:
    if arch not in _STAGES:
        raise ValueError(f"method unfreeze knows the blocks of {sorted(_STAGES)}, not {arch!r}")
    blocks = []
    for stage in _STAGES[arch]:
        r, k, s, e, i, o = stage.split("_")
        for j in range(int(r[1:])):
            blocks.append(Block(int(i[1:]) if j == 0 else int(o[1:]), int(o[1:]), int(k[1:]),
                                int(s[1]) if j == 0 else 1, int(e[1:])))
    return tuple(blocks)


@dataclass(frozen=True)
class ImageSplitShape:
    """Where an image backbone is split and what its upper_weights graph takes. The same
    interface as models/split.SplitShape where method unfreeze uses it; its units are blocks,
    plus the head conv as unit `layers` (always trained with the blocks)."""

    arch: str
    layers: int  # MBConv blocks in all
    split: int  # first block of the upper graph: upper = blocks [split, layers) + the head conv
    hidden: int  # the embedding width (the head conv's channels)
    channels: int  # of the lower feature map (the input of block `split`)
    side: int  # its height and width
    unit: ClassVar[str] = "block"
    setting: ClassVar[str] = "GRAFT_IMAGE_SPLIT_BLOCKS"

    @property
    def upper_layers(self) -> list[int]:
        """The upper graph's units: its blocks, then the head conv (unit `layers`)."""
        return list(range(self.split, self.layers + 1))

    def params_of(self, unit: int) -> dict[str, tuple[int, ...]]:
        blocks = lite_blocks(self.arch)
        if unit == self.layers:
            return {"_conv_head.weight": (self.hidden, blocks[-1].outputs, 1, 1), "_bn1.weight": (self.hidden,),
                    "_bn1.bias": (self.hidden,)}
        return blocks[unit].params()

    def weight_inputs(self) -> list[str]:
        """The upper_weights graph's weight inputs, in order (after hidden): "<unit>.<param path>"."""
        return [f"{unit}.{path}" for unit in self.upper_layers for path in self.params_of(unit)]

    def unfrozen_units(self, layers: int) -> list[int]:
        """What an unfreeze adapter of the top `layers` blocks trains and carries: those blocks
        and the head conv."""
        return list(range(self.layers - layers, self.layers + 1))

    def unit_bytes(self, unit: int) -> int:
        return 4 * sum(int(np.prod(s)) for s in self.params_of(unit).values())

    def unfreeze_bytes(self, layers: int) -> int:
        """Bytes of an unfreeze adapter's weights (fp32): its top `layers` blocks and the head conv."""
        return sum(self.unit_bytes(unit) for unit in self.unfrozen_units(layers))

    def bytes_note(self) -> str:
        blocks = ", ".join(f"{unit}: {self.unit_bytes(unit) / 2**20:.1f}" for unit in range(self.layers - 1,
                                                                                           self.split - 1, -1))
        return f"the head conv {self.unit_bytes(self.layers) / 2**20:.1f} MiB, blocks {blocks} MiB"

    def unfreeze_recipe(self, layers: int) -> dict[str, Any]:
        """What an unfreeze adapter's config records (`AdapterConfig.unfreeze`); `arch` marks
        an image backbone's (adapters/format.py unfreeze_shape)."""
        return {"layers": layers, "split": self.split, "backbone_layers": self.layers, "hidden": self.hidden,
                "arch": self.arch}


def image_split_shape(arch: str, top_blocks: int, image_size: int | None = None) -> ImageSplitShape:
    """The shape of `arch` split below its top `top_blocks` blocks (ValueError outside 1..blocks)."""
    blocks = lite_blocks(arch)
    n = len(blocks)
    if not 1 <= top_blocks <= n:
        raise ValueError(f"{arch} has {n} blocks: split between 1 and {n} of them off (GRAFT_IMAGE_SPLIT_BLOCKS)")
    split = n - top_blocks
    side = -(-(image_size or _IMAGE_SIZE[arch]) // 2)  # the stem's stride, "same" padding
    for block in blocks[:split]:
        side = -(-side // block.stride)
    return ImageSplitShape(arch, n, split, HEAD_CHANNELS, blocks[split].inputs, side)


def build_image_modules(spec: BackboneSpec, shape: ImageSplitShape):  # -> (lower, upper) torch modules
    """The torch halves of the CNN (frozen, eval), sharing the pretrained weights. `upper`
    takes (hidden (B, H*W, C), ignored mask) as text's upper layers do, so the training loop
    of adapters/deep.py drives both; it keeps batch norms in inference mode when trained."""
    import torch

    from models.image import PREPROCESSING, load_torch_image_encoder

    cnn = load_torch_image_encoder(spec).cnn
    blocks = list(cnn._blocks)
    if len(blocks) != shape.layers:
        raise ValueError(f"{spec.id!r} has {len(blocks)} blocks, its split shape {shape.layers}")

    class Lower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.bn, self.act = cnn._conv_stem, cnn._bn0, cnn._swish
            self.blocks = torch.nn.ModuleList(blocks[: shape.split])

        def forward(self, pixels):  # type: ignore[no-untyped-def]
            x = pixels.permute(0, 3, 1, 2).to(torch.float32)
            x = (x - PREPROCESSING["mean"]) / PREPROCESSING["std"]
            x = self.act(self.bn(self.stem(x)))
            for block in self.blocks:
                x = block(x)
            return x.flatten(2).transpose(1, 2)  # (B, H*W, C)

    class HeadConv(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._conv_head, self._bn1, self._swish = cnn._conv_head, cnn._bn1, cnn._swish

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self._swish(self._bn1(self._conv_head(x)))

    class Upper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([*blocks[shape.split :], HeadConv()])
            self.pool = cnn._avg_pooling

        def forward(self, hidden, attention_mask=None):  # type: ignore[no-untyped-def]
            x = hidden.transpose(1, 2).reshape(-1, shape.channels, shape.side, shape.side)
            for layer in self.layers:
                x = layer(x)
            return torch.nn.functional.normalize(self.pool(x).flatten(1), p=2, dim=1)

        def train(self, mode: bool = True):  # type: ignore[no-untyped-def]
            """Batch norms stay in inference mode (pretrained statistics, as served): small
            fine-tuning batches would estimate them badly."""
            super().train(mode)
            for module in self.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.eval()
            return self

    return Lower().eval(), Upper().eval()


def export_image_split(spec: BackboneSpec, shape: ImageSplitShape, lower_out: Path, upper_out: Path,
                       pretrained_out: Path) -> None:
    """Export the lower graph, the upper_weights graph (every upper parameter an input, no
    batch axis on them) and the pretrained upper weights (safetensors, named as the inputs);
    fp32, dynamic batch axis."""
    import torch
    from safetensors.numpy import save

    from models.image import calibration_images

    lower, upper = build_image_modules(spec, shape)
    for unit, layer in zip(shape.upper_layers, upper.layers):
        found = {n: tuple(t.shape) for n, t in layer.named_parameters()}
        if found != shape.params_of(unit):
            raise ValueError(f"unit {unit} of {spec.id!r} is not what method unfreeze knows of {shape.arch}: "
                             f"{sorted(set(found) ^ set(shape.params_of(unit))) or 'other shapes'}")
    names = shape.weight_inputs()

    def owner_of(name: str) -> tuple[Any, str]:
        unit, path = name.split(".", 1)
        *modules, attr = path.split(".")
        owner = upper.layers[int(unit) - shape.split]
        for part in modules:
            owner = getattr(owner, part)
        return owner, attr

    class UpperWithWeights(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.upper = upper

        def forward(self, hidden, *weights):  # type: ignore[no-untyped-def]
            for name, weight in zip(names, weights):  # each parameter shadowed by its input (models/split.py)
                owner, attr = owner_of(name)
                owner.__dict__[attr] = weight
            return self.upper(hidden)

    pretrained = {name: getattr(*owner_of(name)).detach().clone() for name in names}
    pixels = torch.from_numpy(calibration_images(2, spec.image_size))
    opset = IMAGE_SPLIT_SETTINGS["opset"]
    with torch.no_grad():
        torch.onnx.export(lower, (pixels,), str(lower_out), dynamo=False, opset_version=opset,
                          input_names=["pixels"], output_names=["hidden"],
                          dynamic_axes={"pixels": {0: "batch"}, "hidden": {0: "batch"}})
        hidden = lower(pixels)
        torch.onnx.export(UpperWithWeights().eval(), (hidden, *(pretrained[n] for n in names)), str(upper_out),
                          dynamo=False, opset_version=opset, input_names=["hidden", *names],
                          output_names=["embeddings"],
                          dynamic_axes={"hidden": {0: "batch"}, "embeddings": {0: "batch"}})
    pretrained_out.write_bytes(save({n: t.numpy().astype(np.float32) for n, t in pretrained.items()}))


class ImageSplitRunner:
    """The lower and upper_weights graphs of a split image backbone (fp32), with the
    pretrained upper weights fed for what an adapter does not carry."""

    def __init__(self, shape: ImageSplitShape, lower: OrtRunner, upper_weights: Any) -> None:
        self.shape, self.lower = shape, lower
        self.upper_weights = upper_weights  # models.text.UpperWeights: its runner, names, pretrained

    def upper(self, hidden: np.ndarray, layers: UnfrozenLayers | None) -> np.ndarray:
        """Embeddings of lower feature maps (B, H*W, C) whose rows all take `layers` (one
        adapter's; None: the pretrained weights)."""
        uw = self.upper_weights
        weights = layers.weights if layers is not None else {}
        return uw.runner.run(hidden, *(weights.get(n, uw.pretrained[n]) for n in uw.names))
