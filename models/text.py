"""Text backbones: a fast tokenizer feeding an ONNX sentence encoder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from models.base import Backbone, EmbedResult, ItemError
from models.catalog import BackboneSpec
from models.runtime import Lanes, OrtRunner
from models.split import LoraFactors, SplitShape, UnfrozenLayers, stack_factors


@dataclass(frozen=True, slots=True)
class Tokens:
    """One text, tokenised: its token ids (int64, unpadded) and whether it was cut to fit.
    What `TextBackbone.prepare_many` makes, off the compute lane, and `embed` takes."""

    ids: np.ndarray
    truncated: bool

    def __len__(self) -> int:
        return len(self.ids)


class Tokenizer:
    """Hugging Face fast tokenizer with truncation to the backbone's token limit."""

    def __init__(self, tokenizer_json: Path, max_tokens: int, *, pad_token: str | None = None,
                 pad_id: int | None = None, prefix: str = "") -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(tokenizer_json))
        padding = self._tok.padding  # the tokenizer's own padding settings, if it has any
        self._tok.enable_truncation(max_length=max_tokens)
        self._tok.no_padding()  # rows are padded per sub-batch (pad), to the longest in it
        # The pad token: the tokenizer's (its padding settings, then its config's pad_token),
        # then the model config's pad_token_id; "[PAD]" / "<pad>" by name; else 0.
        found = [padding["pad_id"] if padding else None,
                 self._tok.token_to_id(pad_token) if pad_token else None, pad_id,
                 self._tok.token_to_id("[PAD]"), self._tok.token_to_id("<pad>")]
        self.pad_id = next((int(i) for i in found if i is not None), 0)
        self.max_tokens = max_tokens
        self.prefix = prefix  # the backbone's query prompt (catalogue `prompts.query`), before every text

    def tokenize(self, texts: list[str], prefix: str | None = None) -> list[Tokens]:
        """One Rust call for all texts (it releases the GIL while it works); `prefix` None: the
        query prompt (`self.prefix`), else this one before every text ("" for none)."""
        prefix = self.prefix if prefix is None else prefix
        if prefix:
            texts = [prefix + t for t in texts]
        return [Tokens(np.array(e.ids, dtype=np.int64), bool(e.overflowing)) for e in self._tok.encode_batch(texts)]

    def pad(self, rows: list[Tokens]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids and attention_mask (int64), padded to the longest row."""
        width = max(len(r) for r in rows)
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = r.ids
            mask[i, : len(r)] = 1
        return ids, mask

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray, list[bool]]:
        """input_ids and attention_mask (int64, padded to the longest) and truncation flags."""
        rows = self.tokenize(texts)
        return (*self.pad(rows), [r.truncated for r in rows])


def load_tokenizer(spec: BackboneSpec) -> Tokenizer:
    path = spec.path / "tokenizer.json"
    if not path.is_file():
        raise ValueError(
            f"{spec.path} has no tokenizer.json (a fast tokenizer); save one with "
            "`AutoTokenizer.from_pretrained(path).save_pretrained(path)`"
        )
    return Tokenizer(path, spec.max_tokens, pad_token=_configured_pad_token(spec.path),
                     pad_id=_config_pad_id(spec.path), prefix=spec.query_prompt)


def _configured_pad_token(path: Path) -> str | None:
    """pad_token of tokenizer_config.json or special_tokens_map.json (a string, or a dict
    with "content")."""
    import json

    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        f = path / name
        if f.is_file():
            value = json.loads(f.read_text()).get("pad_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value:
                return value
    return None


def _config_pad_id(path: Path) -> int | None:
    import json

    f = path / "config.json"
    value = json.loads(f.read_text()).get("pad_token_id") if f.is_file() else None
    return int(value) if isinstance(value, int) else None


class UpperWeights:
    """The upper_weights graph of a split backbone (models/split.py: every upper-layer
    parameter an input) and the pretrained weights it is fed for the layers an unfreeze
    adapter does not carry."""

    def __init__(self, shape: SplitShape, runner: OrtRunner, pretrained: dict[str, np.ndarray]) -> None:
        self.names = shape.weight_inputs()
        missing = set(self.names) - set(pretrained)
        if missing:
            raise ValueError(f"the pretrained upper weights lack {sorted(missing)[:3]}…: delete and re-export them")
        self.runner, self.pretrained = runner, pretrained

    @classmethod
    def load(cls, shape: SplitShape, graph: Path, pretrained: Path, provider: str,
             intra_op_threads: int = 0) -> "UpperWeights":
        from safetensors.numpy import load_file

        return cls(shape, OrtRunner(graph, provider, "fp32", intra_op_threads, spinning=False),
                   load_file(str(pretrained)))

    def run(self, hidden: np.ndarray, mask: np.ndarray, layers: UnfrozenLayers) -> np.ndarray:
        """Embeddings of rows that all take `layers` (one adapter's)."""
        return self.runner.run(hidden, mask, *(layers.weights.get(n, self.pretrained[n]) for n in self.names))


class SplitRunner:
    """The lower and upper graphs of a split backbone (models/split.py; fp32, or per-token int8
    where the split gate allows: models/int8.py choose_split), and the fp32 upper_weights
    graph when loaded (unfreeze adapters)."""

    def __init__(self, shape: SplitShape, lower: OrtRunner, upper: OrtRunner,
                 upper_weights: UpperWeights | None = None) -> None:
        self.shape, self.lower, self.upper = shape, lower, upper
        self.upper_weights = upper_weights
        self.gate: dict[str, Any] | None = None  # the split graphs' int8 gate verdict (int8 asked for)
        self.fp32_lower: Path | None = None  # the fp32 lower graph, when `lower` is int8
        self._training_lower: OrtRunner | None = None

    @property
    def training_lower(self) -> OrtRunner:
        """The graph whose hidden states deep adapters train on: the fp32 lower graph. On int8
        hidden states LoRA never beat its linear probe on reviews (test macro-F1 0.734, the
        head's 0.730), while factors trained on fp32 states and served through the int8 split
        graphs scored 0.768 (fp32 served: 0.766; docs/BENCHMARKS.md). Loaded on first use
        (in the fine-tune workers)."""
        if self.fp32_lower is None:
            return self.lower
        if self._training_lower is None:
            self._training_lower = OrtRunner(self.fp32_lower, self.lower.provider, "fp32")
        return self._training_lower


class TextBackbone(Backbone):
    kind = "text"

    def __init__(self, spec: BackboneSpec, runner: OrtRunner, split: SplitRunner | None = None,
                 lanes: Lanes | None = None) -> None:
        self.spec = spec
        self.lanes = lanes  # a pass of several calls: its calls side by side (whole graph only)
        self.split = split  # None: head-only adapters
        self.id = spec.id
        self.fingerprint = spec.fingerprint
        self.max_tokens = spec.max_tokens
        self._tokenizer = load_tokenizer(spec)
        self._runner = runner
        self.provider = runner.provider
        self.precision = runner.precision
        # Rows per ORT call. Dynamic int8 picks one activation scale per tensor, so rows in
        # one call would change each other's embeddings (a tenant's result would depend on
        # whoever shares its batch): int8 runs row by row. On CPU, throughput per sentence
        # falls as batches grow, so fp32 runs near-equal-length slices of a few rows; GPUs
        # want big batches (docs/BENCHMARKS.md).
        if self.precision == "int8":
            self.max_rows = 1
        else:
            self.max_rows = 8 if self.provider == "CPUExecutionProvider" else 256
        self.dim = int(self.embed(["dimension probe"]).vectors.shape[1])

    def prepare(self, item: Any) -> str:
        if not isinstance(item, str):
            kind = "an image" if isinstance(item, (bytes, bytearray, memoryview)) else type(item).__name__
            raise ItemError(f"backbone {self.id!r} embeds text: send a string, not {kind}")
        return item

    def prepare_many(self, items: list[Any], input_type: str = "query") -> list[Tokens]:
        """The request's texts checked and tokenised in one call: the compute lane gets
        token ids and only pads them. `input_type` "passage": the catalogue's passage prompt
        before each text instead of its query prompt (E5/BGE-style models; none: no prompt)."""
        prefix = self.spec.passage_prompt if input_type == "passage" else None
        return self._tokenizer.tokenize(super().prepare_many(items), prefix)

    def cost(self, item: Any) -> int:
        return len(item) if isinstance(item, Tokens) else self.max_tokens

    @property
    def split_shape(self) -> SplitShape | None:
        return self.split.shape if self.split else None

    @property
    def hidden_key(self) -> str:
        """What `hidden_states` depend on, keying their cache (adapters/pipeline.py
        hidden_cached): the weights, the split layer and the lower graph that computes them
        (`SplitRunner.training_lower`: its file and its precision). Any change misses."""
        split = self._require_split()
        lower = split.training_lower
        return f"{self.fingerprint}:s{split.shape.split}:{Path(lower.model_path).stem}:{lower.precision}"

    def embed_deep(self, items: list[str], deep: list[LoraFactors | UnfrozenLayers | None]) -> EmbedResult:
        """Embed through the split graphs, each row with its own deep adapter: LoRA factors,
        an unfreeze adapter's layers, or None (neither). One lower call per sub-batch for all
        rows, whatever their adapters; then per sub-batch one upper call for its LoRA and
        plain rows together (each row's own factors), and per unfreeze adapter one
        upper_weights call for all its rows of the batch (sorted by length, `rows_per_call`
        at most: each call feeds the adapter's weights anew)."""
        split = self._require_split()
        rows_per_call = 8 if self.provider == "CPUExecutionProvider" else 256
        calls = 0
        unfrozen: dict[int, list[tuple[int, np.ndarray]]] = {}  # adapter -> its rows' (index, hidden states)

        def run(ids: np.ndarray, mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
            nonlocal calls
            hidden = split.lower.run(ids, mask)
            out = np.zeros((len(rows), split.shape.hidden), dtype=np.float32)  # unfreeze rows: filled below
            lora = []
            for j, (i, n) in enumerate(zip(rows, mask.sum(1))):
                if isinstance(deep[i], UnfrozenLayers):
                    unfrozen.setdefault(id(deep[i]), []).append((int(i), hidden[j, :n]))
                else:
                    lora.append(j)
            if lora:
                sel = np.array(lora)
                h, m = (hidden, mask) if len(lora) == len(rows) else (hidden[sel], mask[sel])
                out[sel] = split.upper.run(h, m, *stack_factors(split.shape, [deep[rows[j]] for j in lora]))
            calls += 1 + bool(lora)
            return out

        result = self._in_sub_batches(items, rows_per_call, run)
        for group in unfrozen.values():
            group.sort(key=lambda row: len(row[1]))
            layers = deep[group[0][0]]
            assert isinstance(layers, UnfrozenLayers)
            for start in range(0, len(group), rows_per_call):
                chunk = group[start : start + rows_per_call]
                width = len(chunk[-1][1])
                h = np.zeros((len(chunk), width, split.shape.hidden), dtype=np.float32)
                m = np.zeros((len(chunk), width), dtype=np.int64)
                for j, (_, states) in enumerate(chunk):
                    h[j, : len(states)], m[j, : len(states)] = states, 1
                result.vectors[[i for i, _ in chunk]] = self._require_upper_weights().run(h, m, layers)
                calls += 1
        return EmbedResult(result.vectors, result.truncated, calls=calls)

    def hidden_states(self, texts: list[str], rows_per_call: int = 16) -> list[np.ndarray]:
        """The lower graph's output per text, (tokens, hidden) each, kept in float16 (half the
        memory; training reads them back as float32): what training feeds the upper layers,
        computed once per example by the fp32 lower graph (`SplitRunner.training_lower`)."""
        split = self._require_split()
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        ids, mask, _ = self._tokenizer.encode(texts)
        lengths = mask.sum(1)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(texts), rows_per_call):
            rows = order[start : start + rows_per_call]
            width = int(lengths[rows].max())
            hidden = split.training_lower.run(ids[rows, :width], mask[rows, :width])
            for j, i in enumerate(rows):
                out[i] = hidden[j, : lengths[i]].astype(np.float16)
        return out

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(family=self.spec.family, pooling=self.spec.pooling, max_tokens=self.max_tokens)
        if self.split is not None:
            shape = self.split.shape
            methods = ["lora", "unfreeze"] if self.split.upper_weights else ["lora"]
            out["deep_adapters"] = {"methods": methods, "layers": shape.layers - shape.split, "split": shape.split,
                                    "precision": self.split.lower.precision,
                                    **({"gate": self.split.gate["reason"]} if self.split.gate else {})}
        return out

    def upper_module(self):  # -> torch.nn.Module (torch imported lazily)
        """The upper layers in torch (frozen, pretrained weights), for training deep adapters."""
        from models.split import build_modules

        assert self.split is not None
        return build_modules(self.spec, self.split.shape)[1]

    def embed(self, items: list[Any]) -> EmbedResult:
        return self._in_sub_batches(items, self.max_rows, lambda ids, mask, rows: self._runner.run(ids, mask),
                                    lanes=self.lanes)

    def _in_sub_batches(self, items: list[Any], max_rows: int,
                        run: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
                        lanes: Lanes | None = None) -> EmbedResult:
        """Tokenise what is not yet (texts; `prepare_many` output passes as is), sort by token
        count (sub-batches of similar lengths pad little), cut into sub-batches, `run(ids,
        mask, original row indices)` each, restore the order. With `lanes` and more than one
        sub-batch, the sub-batches run side by side in the lanes instead (the whole graph)."""
        if not items:
            return EmbedResult(vectors=np.empty((0, self.dim), dtype=np.float32), truncated=[])
        rows = self._tokens(items)
        lengths = np.array([len(r) for r in rows])
        order = np.argsort(lengths, kind="stable")
        calls = []
        start = 0
        for stop in _split_by_padding(lengths[order], max_rows):
            calls.append((*self._tokenizer.pad([rows[i] for i in order[start:stop]]), order[start:stop]))
            start = stop
        if lanes is not None and len(calls) > 1:
            chunks = lanes.run_all([(ids, mask) for ids, mask, _ in calls])
        else:
            chunks = [run(ids, mask, where) for ids, mask, where in calls]
        out = np.empty((len(items), chunks[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(chunks)
        return EmbedResult(vectors=out, truncated=[r.truncated for r in rows], calls=len(chunks))

    def _tokens(self, items: list[Any]) -> list[Tokens]:
        texts = [i for i in items if not isinstance(i, Tokens)]
        if not texts:
            return items
        made = iter(self._tokenizer.tokenize(texts))
        return [i if isinstance(i, Tokens) else next(made) for i in items]

    def _require_upper_weights(self) -> UpperWeights:
        split = self._require_split()
        if split.upper_weights is None:
            raise ValueError(f"backbone {self.id!r} was loaded without its upper_weights graph: unfreeze adapters "
                             "cannot serve here")
        return split.upper_weights

    def _require_split(self) -> SplitRunner:
        if self.split is None:
            raise ValueError(f"backbone {self.id!r} is not split: deep adapters need GRAFT_SPLIT_LAYERS > 0")
        return self.split


def _split_by_padding(
    sorted_lengths: np.ndarray, max_rows: int = 256, waste: float = 0.5, min_rows: int = 8
) -> list[int]:
    """End indices of sub-batches of a length-sorted batch.

    A new sub-batch starts at `max_rows` rows, or when padding the rows so far to the next
    length would waste more than `waste` of the tokens (tiny sub-batches are not worth an
    extra ORT call).
    """
    ends: list[int] = []
    start = 0
    n = len(sorted_lengths)
    for i in range(1, n):
        rows = i - start
        real = int(sorted_lengths[start:i].sum()) + int(sorted_lengths[i])
        padded = (rows + 1) * int(sorted_lengths[i])
        if rows >= max_rows or (rows >= min_rows and 1 - real / padded > waste):
            ends.append(i)
            start = i
    ends.append(n)
    return ends
