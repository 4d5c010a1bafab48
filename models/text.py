"""Text backbones: a fast tokenizer feeding an ONNX sentence encoder."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from models.base import Backbone, EmbedResult, ItemError
from models.catalog import BackboneSpec
from models.runtime import OrtRunner
from models.split import LoraFactors, SplitShape, stack_factors


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

    def __init__(self, tokenizer_json: Path, max_tokens: int) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        self._tok = HFTokenizer.from_file(str(tokenizer_json))
        self._tok.enable_truncation(max_length=max_tokens)
        self._tok.no_padding()  # rows are padded per sub-batch (pad), to the longest in it
        pad_id = self._tok.token_to_id("[PAD]")
        self.pad_id = pad_id if pad_id is not None else 0
        self.max_tokens = max_tokens

    def tokenize(self, texts: list[str]) -> list[Tokens]:
        """One Rust call for all texts (it releases the GIL while it works)."""
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
    return Tokenizer(path, spec.max_tokens)


class SplitRunner:
    """The lower and upper fp32 graphs of a split backbone (models/split.py)."""

    def __init__(self, shape: SplitShape, lower: OrtRunner, upper: OrtRunner) -> None:
        self.shape, self.lower, self.upper = shape, lower, upper


class TextBackbone(Backbone):
    kind = "text"

    def __init__(self, spec: BackboneSpec, runner: OrtRunner, split: SplitRunner | None = None) -> None:
        self.spec = spec
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

    def prepare_many(self, items: list[Any]) -> list[Tokens]:
        """The request's texts checked and tokenised in one call: the compute lane gets
        token ids and only pads them."""
        return self._tokenizer.tokenize(super().prepare_many(items))

    def cost(self, item: Any) -> int:
        return len(item) if isinstance(item, Tokens) else self.max_tokens

    @property
    def split_shape(self) -> SplitShape | None:
        return self.split.shape if self.split else None

    def embed_deep(self, items: list[str], factors: list[LoraFactors | None]) -> EmbedResult:
        """Embed through the split graphs, each row with its own LoRA factors (None: none):
        one lower and one upper call per sub-batch, whatever the mix of adapters."""
        split = self._require_split()

        def run(ids: np.ndarray, mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
            hidden = split.lower.run(ids, mask)
            return split.upper.run(hidden, mask, *stack_factors(split.shape, [factors[i] for i in rows]))

        rows_per_call = 8 if self.provider == "CPUExecutionProvider" else 256
        result = self._in_sub_batches(items, rows_per_call, run)
        return EmbedResult(result.vectors, result.truncated, calls=2 * result.calls)

    def hidden_states(self, texts: list[str], rows_per_call: int = 16) -> list[np.ndarray]:
        """The lower graph's output per text, (tokens, hidden) each, kept in float16 (half the
        memory; training reads them back as float32): what training feeds the upper layers,
        computed once per example with the graph that serves."""
        split = self._require_split()
        out: list[np.ndarray] = [np.empty(0)] * len(texts)
        ids, mask, _ = self._tokenizer.encode(texts)
        lengths = mask.sum(1)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(texts), rows_per_call):
            rows = order[start : start + rows_per_call]
            width = int(lengths[rows].max())
            hidden = split.lower.run(ids[rows, :width], mask[rows, :width])
            for j, i in enumerate(rows):
                out[i] = hidden[j, : lengths[i]].astype(np.float16)
        return out

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.split is not None:
            shape = self.split.shape
            out["deep_adapters"] = {"methods": ["lora"], "layers": shape.layers - shape.split, "split": shape.split}
        return out

    def upper_module(self):  # -> torch.nn.Module (torch imported lazily)
        """The upper layers in torch (frozen, pretrained weights), for training deep adapters."""
        from models.split import build_modules

        assert self.split is not None
        return build_modules(self.spec, self.split.shape)[1]

    def embed(self, items: list[Any]) -> EmbedResult:
        return self._in_sub_batches(items, self.max_rows, lambda ids, mask, rows: self._runner.run(ids, mask))

    def _in_sub_batches(self, items: list[Any], max_rows: int,
                        run: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> EmbedResult:
        """Tokenise what is not yet (texts; `prepare_many` output passes as is), sort by token
        count (sub-batches of similar lengths pad little), cut into sub-batches, `run(ids,
        mask, original row indices)` each, restore the order."""
        if not items:
            return EmbedResult(vectors=np.empty((0, self.dim), dtype=np.float32), truncated=[])
        rows = self._tokens(items)
        lengths = np.array([len(r) for r in rows])
        order = np.argsort(lengths, kind="stable")
        chunks = []
        start = 0
        for stop in _split_by_padding(lengths[order], max_rows):
            ids, mask = self._tokenizer.pad([rows[i] for i in order[start:stop]])
            chunks.append(run(ids, mask, order[start:stop]))
            start = stop
        out = np.empty((len(items), chunks[0].shape[1]), dtype=np.float32)
        out[order] = np.concatenate(chunks)
        return EmbedResult(vectors=out, truncated=[r.truncated for r in rows], calls=len(chunks))

    def _tokens(self, items: list[Any]) -> list[Tokens]:
        texts = [i for i in items if not isinstance(i, Tokens)]
        if not texts:
            return items
        made = iter(self._tokenizer.tokenize(texts))
        return [i if isinstance(i, Tokens) else next(made) for i in items]

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
