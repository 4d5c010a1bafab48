"""Split-point text backbones: the frozen lower layers and the adaptable upper layers as
ONNX graphs, so that deep adapters (LoRA on the top layers, or the top layers unfrozen)
serve many tenants in one call.

    lower: input_ids, attention_mask -> hidden (B, T, H)       embeddings + layers [0, split)
    upper: hidden, attention_mask, lora_a.<l>.<target> (B, d_in, r), lora_b.<l>.<target> (B, r, d_out)
           -> embeddings (B, H), pooled and L2-normalised       layers [split, n)
    upper_weights: hidden, attention_mask, <l>.<param path> (every parameter of layers [split, n),
           no batch axis) -> embeddings (B, H): the rows of one unfreeze adapter per call

Each adapted projection of the upper layers adds `x · A_row · B_row` to its frozen output,
where A_row and B_row are that row's own LoRA factors (the scale alpha/r folded into B):
a batched MatMul in ONNX, Punica's gather-matmul idea. Rows without LoRA carry zeros, and
the rank axis is dynamic (a batch pads to its largest rank with zero columns, which adds
nothing). Both graphs run in fp32: no activation scale is shared across rows, so a row's
vector never depends on its batch-mates.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from models.catalog import BackboneSpec

# The projections of a BERT layer LoRA may adapt (PEFT's module names inside BertLayer).
TARGETS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
           "intermediate.dense", "output.dense")
# The names the API takes for them.
TARGET_NAMES = {"query": TARGETS[0], "key": TARGETS[1], "value": TARGETS[2], "attention_output": TARGETS[3],
                "ffn_in": TARGETS[4], "ffn_out": TARGETS[5]}
SPLIT_SETTINGS: dict[str, Any] = {"format": 2, "opset": 17}


@dataclass(frozen=True)
class SplitShape:
    """Where a backbone is split and what its upper graph takes."""

    layers: int  # transformer layers in all
    split: int  # first adapted layer: upper = layers [split, layers)
    hidden: int
    intermediate: int
    # What method unfreeze counts (its `layers`) and the setting that offers them; an image
    # backbone's shape (models/image_split.ImageSplitShape) counts blocks.
    unit: ClassVar[str] = "layer"
    setting: ClassVar[str] = "GRAFT_SPLIT_LAYERS"

    @property
    def upper_layers(self) -> list[int]:
        return list(range(self.split, self.layers))

    def dims(self, target: str) -> tuple[int, int]:
        """(d_in, d_out) of a target projection."""
        if target == "intermediate.dense":
            return self.hidden, self.intermediate
        if target == "output.dense":
            return self.intermediate, self.hidden
        return self.hidden, self.hidden

    def inputs(self) -> list[str]:
        """The LoRA input names of the upper graph, in order (after hidden, attention_mask)."""
        return [f"lora_{ab}.{layer}.{t}" for layer in self.upper_layers for t in TARGETS for ab in "ab"]

    def layer_params(self) -> dict[str, tuple[int, ...]]:
        """Every parameter of one transformer layer, by its path inside BertLayer: what method
        unfreeze trains and its adapters carry."""
        h, i = self.hidden, self.intermediate
        out: dict[str, tuple[int, ...]] = {}
        for target in TARGETS:
            d_in, d_out = self.dims(target)
            out[f"{target}.weight"], out[f"{target}.bias"] = (d_out, d_in), (d_out,)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            out[f"{norm}.weight"], out[f"{norm}.bias"] = (h,), (h,)
        assert i == self.dims("intermediate.dense")[1]
        return out

    @property
    def layer_bytes(self) -> int:
        """Bytes of one layer's parameters in fp32 (an unfreeze adapter carries this per layer)."""
        return 4 * sum(int(np.prod(s)) for s in self.layer_params().values())

    def weight_inputs(self) -> list[str]:
        """The upper_weights graph's weight inputs, in order (after hidden, attention_mask):
        "<absolute layer>.<param path>"."""
        return [f"{layer}.{path}" for layer in self.upper_layers for path in self.layer_params()]

    def params_of(self, layer: int) -> dict[str, tuple[int, ...]]:
        """Every parameter of upper layer `layer` (absolute), by its path: all layers alike."""
        return self.layer_params()

    def unfrozen_units(self, layers: int) -> list[int]:
        """The absolute layers an unfreeze adapter of the top `layers` layers trains and carries."""
        return list(range(self.layers - layers, self.layers))

    def unfreeze_bytes(self, layers: int) -> int:
        """Bytes of an unfreeze adapter's weights (fp32) for its top `layers` layers."""
        return layers * self.layer_bytes

    def bytes_note(self) -> str:
        return f"{self.layer_bytes / 2**20:.1f} MiB a layer"

    def unfreeze_recipe(self, layers: int) -> dict[str, Any]:
        """What an unfreeze adapter's config records (`AdapterConfig.unfreeze`): the shape it fits."""
        return {"layers": layers, "split": self.split, "backbone_layers": self.layers, "hidden": self.hidden,
                "intermediate": self.intermediate}


class DeepUnsupportedError(ValueError):
    """The backbone's family has no split graphs: deep adapters (lora, unfreeze) are refused."""


def split_shape(spec: BackboneSpec, top_layers: int) -> SplitShape:
    import json

    from models.families import family_of_dir

    family = family_of_dir(spec.path)
    if not family.deep:
        raise DeepUnsupportedError(
            f"backbone {spec.id!r} ({family.name}) does not support deep adapters (methods lora and unfreeze): its "
            "layers are not BERT-shaped, which the split graphs need; use method head (or lexical, hybrid)")

    # config.json as written (serving has no transformers); its class's defaults only for a
    # key it leaves out (BERT-shaped configs write all three).
    config = json.loads((Path(spec.path) / "config.json").read_text())
    keys = ("num_hidden_layers", "hidden_size", "intermediate_size")
    if not all(k in config for k in keys):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(spec.path), local_files_only=True).to_dict()
    n = int(config["num_hidden_layers"])
    if not 1 <= top_layers <= n:
        raise ValueError(f"backbone {spec.id!r} has {n} layers: adapt between 1 and {n} of them")
    return SplitShape(n, n - top_layers, int(config["hidden_size"]), int(config["intermediate_size"]))


def extended_mask(config: Any, hidden: Any, mask: Any) -> Any:
    """The attention mask the encoder's layers take, built by transformers exactly as the whole
    model builds it: ONNX Runtime's attention fusion recognises that pattern (a hand-made
    additive mask left the split graphs' attention unfused), and the torch halves then mask
    as the whole model does."""
    from transformers.masking_utils import create_bidirectional_mask

    return create_bidirectional_mask(config=config, inputs_embeds=hidden, attention_mask=mask,
                                     allow_is_bidirectional_skip=False)


def pool(hidden: Any, mask: Any, pooling: str, dense: Any = ()) -> Any:
    """Pooling as sentence-transformers does it (mean, cls, max over the unmasked tokens, or
    the last unmasked token: rows are padded on the right), the Dense modules, then L2."""
    import torch

    if pooling == "cls":
        pooled = hidden[:, 0]
    elif pooling == "max":
        pooled = hidden.masked_fill(mask.unsqueeze(-1) == 0, -1e9).max(1).values
    elif pooling == "last-token":
        last = (mask.sum(1) - 1).clamp(min=0)
        pooled = hidden[torch.arange(hidden.shape[0]), last]
    elif pooling == "mean":
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    else:
        raise ValueError(f"unknown pooling {pooling!r}")
    for module in dense:
        pooled = module(pooled)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def build_modules(spec: BackboneSpec, shape: SplitShape):  # -> (lower, upper) torch modules
    """The torch halves of the backbone (frozen, eval), sharing the pretrained weights."""
    import torch

    from models.export import load_torch_encoder

    whole = load_torch_encoder(spec)
    encoder, dense = whole.encoder, list(whole.dense)

    class Lower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embeddings = encoder.embeddings
            self.layers = torch.nn.ModuleList(encoder.encoder.layer[: shape.split])

        def forward(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]
            hidden = self.embeddings(input_ids=input_ids, token_type_ids=torch.zeros_like(input_ids))
            ext = extended_mask(encoder.config, hidden, attention_mask)
            for layer in self.layers:
                hidden = layer(hidden, attention_mask=ext)
            return hidden

    class Upper(torch.nn.Module):
        """The top layers; `lora` (set per call) maps "<layer>.<target>" to per-row (A, B)."""

        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList(encoder.encoder.layer[shape.split :])

        def forward(self, hidden, attention_mask):  # type: ignore[no-untyped-def]
            ext = extended_mask(encoder.config, hidden, attention_mask)
            for layer in self.layers:
                hidden = layer(hidden, attention_mask=ext)
            return pool(hidden, attention_mask, spec.pooling, self.dense)

    upper = Upper()
    upper.dense = torch.nn.ModuleList(dense)  # the sentence-transformers Dense modules, frozen
    return Lower().eval(), upper.eval()


class BatchedLoRA:
    """Wraps a frozen nn.Linear: output + x · A · B with per-row factors set before a call."""

    def __init__(self, linear: Any) -> None:
        self.linear = linear
        self.a: Any = None
        self.b: Any = None

    def __call__(self, x: Any) -> Any:
        import torch

        out = self.linear(x)
        if self.a is not None:
            out = out + torch.matmul(torch.matmul(x, self.a), self.b)
        return out


def _attach(upper: Any, shape: SplitShape) -> dict[str, BatchedLoRA]:
    """Route every target projection of the upper layers through a BatchedLoRA."""
    wrappers: dict[str, BatchedLoRA] = {}
    for index, layer in zip(shape.upper_layers, upper.layers):
        for target in TARGETS:
            *path, name = target.split(".")
            parent = layer
            for part in path:
                parent = getattr(parent, part)
            wrapper = BatchedLoRA(getattr(parent, name))
            parent.__dict__[name] = wrapper  # shadows the registered submodule for forward only
            wrappers[f"{index}.{target}"] = wrapper
    return wrappers


def export_split(spec: BackboneSpec, shape: SplitShape, lower_out: Path, upper_out: Path) -> None:
    """Export both halves (fp32, dynamic batch, sequence and rank axes)."""
    import torch

    from models.text import load_tokenizer

    lower, upper = build_modules(spec, shape)
    ids, mask, _ = load_tokenizer(spec).encode(["a short sentence", "a somewhat longer example sentence for export"])
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    dyn = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(lower, (ids_t, mask_t), str(lower_out), dynamo=False,
                          opset_version=SPLIT_SETTINGS["opset"], input_names=["input_ids", "attention_mask"],
                          output_names=["hidden"],
                          dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "hidden": dyn})
        hidden = lower(ids_t, mask_t)

    wrappers = _attach(upper, shape)

    class UpperWithLoRA(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.upper = upper

        def forward(self, hidden, attention_mask, *factors):  # type: ignore[no-untyped-def]
            for i, key in enumerate(wrappers):
                wrappers[key].a, wrappers[key].b = factors[2 * i], factors[2 * i + 1]
            return self.upper(hidden, attention_mask)

    rank = 2
    factors = []
    for key in wrappers:
        d_in, d_out = shape.dims(key.split(".", 1)[1])
        factors += [torch.zeros(2, d_in, rank), torch.zeros(2, rank, d_out)]
    names = shape.inputs()
    axes: dict[str, dict[int, str]] = {"hidden": dyn, "attention_mask": dyn, "embeddings": {0: "batch"}}
    for name in names:
        axes[name] = {0: "batch", 2: "rank"} if name.startswith("lora_a") else {0: "batch", 1: "rank"}
    with torch.no_grad():
        torch.onnx.export(UpperWithLoRA().eval(), (hidden, mask_t, *factors), str(upper_out), dynamo=False,
                          opset_version=SPLIT_SETTINGS["opset"], input_names=["hidden", "attention_mask", *names],
                          output_names=["embeddings"], dynamic_axes=axes)


def export_upper_weights(spec: BackboneSpec, shape: SplitShape, out: Path, pretrained_out: Path) -> None:
    """Export the upper layers with every parameter a graph input (fp32; dynamic batch and
    sequence axes, no batch axis on the weights), and their pretrained values (safetensors,
    named as the inputs): what rows get for the layers their adapter does not carry."""
    import torch
    from safetensors.numpy import save

    from models.text import load_tokenizer

    lower, upper = build_modules(spec, shape)
    expected = shape.layer_params()
    for index, layer in zip(shape.upper_layers, upper.layers):
        found = {n: tuple(t.shape) for n, t in layer.named_parameters()}
        if found != expected:
            raise ValueError(f"layer {index} of {spec.id!r} is not a BERT layer as method unfreeze knows it: "
                             f"{sorted(set(found) ^ set(expected)) or 'other shapes'}")
    names = shape.weight_inputs()

    class UpperWithWeights(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.upper = upper

        def forward(self, hidden, attention_mask, *weights):  # type: ignore[no-untyped-def]
            # torch.func.functional_call refuses tracing: each parameter is shadowed instead
            # by its input (an instance attribute wins over nn.Module's parameter lookup).
            for name, weight in zip(names, weights):
                layer, path = name.split(".", 1)
                *modules, attr = path.split(".")
                owner = self.upper.layers[int(layer) - shape.split]
                for part in modules:
                    owner = getattr(owner, part)
                owner.__dict__[attr] = weight
            return self.upper(hidden, attention_mask)

    pretrained = {name: upper.layers[int(name.split(".", 1)[0]) - shape.split].get_parameter(name.split(".", 1)[1])
                  for name in names}
    ids, mask, _ = load_tokenizer(spec).encode(["a short sentence", "a somewhat longer example sentence for export"])
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    dyn = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        hidden = lower(ids_t, mask_t)
        torch.onnx.export(UpperWithWeights().eval(), (hidden, mask_t, *(pretrained[n] for n in names)), str(out),
                          dynamo=False, opset_version=SPLIT_SETTINGS["opset"],
                          input_names=["hidden", "attention_mask", *names], output_names=["embeddings"],
                          dynamic_axes={"hidden": dyn, "attention_mask": dyn, "embeddings": {0: "batch"}})
    pretrained_out.write_bytes(save({n: t.detach().numpy().astype(np.float32) for n, t in pretrained.items()}))


@dataclass(frozen=True)
class UnfrozenLayers:
    """One unfreeze adapter's trained top layers as the upper_weights graph takes them:
    "<absolute layer>.<param path>" -> weights; layers it does not carry stay pretrained."""

    weights: dict[str, np.ndarray]

    @property
    def layers(self) -> list[int]:
        return sorted({int(name.split(".", 1)[0]) for name in self.weights})

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.weights.values())


@dataclass(frozen=True)
class LoraFactors:
    """One adapter's factors: "<layer>.<target>" -> (A (d_in, r), B (r, d_out)), scale in B."""

    factors: dict[str, tuple[np.ndarray, np.ndarray]]

    @property
    def rank(self) -> int:
        return max(a.shape[1] for a, _ in self.factors.values())

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes + b.nbytes for a, b in self.factors.values())


def stack_factors(shape: SplitShape, rows: list[LoraFactors | None]) -> list[np.ndarray]:
    """The upper graph's LoRA inputs for a batch: each row's factors, zeros where a row has
    none (or does not adapt a target), padded with zero columns to the batch's largest rank."""
    rank = max([1, *(r.rank for r in rows if r is not None)])
    out: list[np.ndarray] = []
    for layer in shape.upper_layers:
        for target in TARGETS:
            d_in, d_out = shape.dims(target)
            a = np.zeros((len(rows), d_in, rank), dtype=np.float32)
            b = np.zeros((len(rows), rank, d_out), dtype=np.float32)
            key = f"{layer}.{target}"
            for i, row in enumerate(rows):
                if row is not None and key in row.factors:
                    fa, fb = row.factors[key]
                    a[i, :, : fa.shape[1]] = fa
                    b[i, : fb.shape[0]] = fb
            out += [a, b]
    return out
