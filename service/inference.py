"""Inference: the backbones, cross-tenant micro-batching and the adapter cache.

One backbone pass per micro-batch, whatever tenants the rows belong to, then each
(tenant, adapter) group of rows through its head. No transport logic, no tenancy.
"""
from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapters.cache import AdapterCache, BackboneNotLoaded, BackboneRef
from adapters.format import Adapter
from adapters.registry import Registry
from models import Backbone, load_backbone
from models.base import ItemError
from models.catalog import catalog_ids
from service import metrics
from service.batching import ComputeLane, MicroBatcher
from service.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from service.settings import Settings

log = logging.getLogger(__name__)

# A request with at most this many characters of text is tokenised on the event loop
# (~0.1 ms per short sentence, less than a hop to the prepare pool and back).
INLINE_TEXT_CHARS = 1000
# What a text is embedded as (Inference.embed): a query (the default; the catalogue's query
# prompt) or a passage (its passage prompt), as E5/BGE-style models were trained.
INPUT_TYPES = ("query", "passage")


@dataclass(frozen=True, slots=True)
class Work:
    """One item in a micro-batch, with the head (if any) its row goes through."""

    item: Any
    head: Adapter | None = None
    text: str | None = None  # the raw text, for heads that read it (Adapter.needs_text: lexical, hybrid)


@dataclass(frozen=True, slots=True)
class Row:
    vector: np.ndarray
    truncated: bool
    scores: np.ndarray | None


def backbone_pass(backbone: Backbone, work: list[Work], max_loras: int = 32) -> list[Row]:
    """The batch's backbone calls, then one head call per distinct adapter.

    Rows of head-only adapters (and plain embeddings) share the backbone's graph; rows of
    deep adapters share the split graphs' lower pass, at most `max_loras` distinct adapters
    per call (tenants mixed freely within that): LoRA rows then share one upper call, each
    row with its own factors, and an unfreeze adapter's rows take one upper_weights call.
    Rows of lexical adapters need no vector (zeros): they skip the graphs and meet the other
    rows in the head stage, which hands lexical and hybrid heads the rows' texts."""
    started = time.perf_counter()
    deep = [i for i, w in enumerate(work) if w.head is not None and w.head.deep is not None]
    skip = {i for i, w in enumerate(work) if w.head is not None and not w.head.needs_vector}
    if not deep and not skip:
        result = backbone.embed([w.item for w in work])
        vectors, truncated, calls = result.vectors, result.truncated, result.calls
    else:
        vectors = np.zeros((len(work), backbone.dim), dtype=np.float32)
        truncated, calls = [False] * len(work), 0
        deep_rows = set(deep)
        plain = [i for i in range(len(work)) if i not in deep_rows and i not in skip]
        calls_by_rows = [(plain, lambda rows: backbone.embed([work[i].item for i in rows]))] if plain else []
        calls_by_rows += [(rows, lambda rows: backbone.embed_deep(  # type: ignore[attr-defined]
            [work[i].item for i in rows], [work[i].head.deep for i in rows]))  # type: ignore[union-attr]
            for rows in (_by_adapters(work, deep, max_loras) if deep else [])]
        for rows, embed in calls_by_rows:
            result = embed(rows)
            vectors[rows] = result.vectors
            for i, t in zip(rows, result.truncated):
                truncated[i] = t
            calls += result.calls
    heads_started = time.perf_counter()
    metrics.backbone_compute_seconds.labels(backbone.id).observe(heads_started - started)
    metrics.observe_stage("model", heads_started - started)
    metrics.backbone_ort_calls.labels(backbone.id).inc(calls)
    scores: list[np.ndarray | None] = [None] * len(work)
    groups: dict[int, list[int]] = {}
    for i, w in enumerate(work):
        if w.head is not None:
            groups.setdefault(id(w.head), []).append(i)
    for rows in groups.values():
        head = work[rows[0]].head
        assert head is not None
        texts = [work[i].text for i in rows] if head.needs_text else None
        for i, p in zip(rows, head.predict_proba(vectors[rows], texts)):
            scores[i] = p
    if groups:
        metrics.observe_heads(backbone.id, len(groups), time.perf_counter() - heads_started)
        metrics.observe_stage("head", time.perf_counter() - heads_started)
    return [Row(vectors[i], truncated[i], scores[i]) for i in range(len(work))]


def _by_adapters(work: list[Work], rows: list[int], max_loras: int) -> list[list[int]]:
    """`rows` cut into groups of at most `max_loras` distinct adapters each."""
    groups: list[list[int]] = [[]]
    seen: set[int] = set()
    for i in sorted(rows, key=lambda i: id(work[i].head)):
        key = id(work[i].head)
        if key not in seen and len(seen) == max_loras:
            groups.append([])
            seen = set()
        seen.add(key)
        groups[-1].append(i)
    return groups


@dataclass(frozen=True)
class Embedding:
    backbone: Backbone
    vectors: np.ndarray
    truncated: list[bool]
    tokens: int = 0  # text: the tokens the backbone read (special tokens in, after truncation)


@dataclass(frozen=True)
class Prediction:
    tenant: str
    adapter: str
    version: int
    backbone: str
    predictions: list[dict[str, Any]]


class Inference:
    def __init__(self, settings: Settings, registry: Registry) -> None:
        self.settings = settings
        self.backbones: dict[str, Backbone] = {}
        self._batchers: dict[str, MicroBatcher[Work, Row]] = {}
        # CPU backbones take turns on one thread: each pass gets every core, and passes of
        # different backbones alternate (FIFO) instead of fighting over the cores, so text
        # and image traffic share the CPU without either starving (docs/BENCHMARKS.md).
        self._cpu_lane = ComputeLane("backbone-cpu")
        # Image decoding and the tokenising of large requests have their own small pool: a
        # burst of large images neither queues the database and auth calls of asyncio's
        # default pool nor decodes more than GRAFT_DECODE_THREADS images (each up to
        # GRAFT_MAX_IMAGE_PIXELS) at once; the compute lane gets items ready to run.
        self._prepare_pool = ThreadPoolExecutor(max_workers=settings.decode_threads, thread_name_prefix="prepare")
        self._failure: str | None = None
        self._loading: asyncio.Task[None] | None = None
        self.cache = AdapterCache(
            registry,
            self._backbone_ref,
            max_bytes=settings.cache_max_mb * 1024 * 1024,
            poll_interval_s=settings.registry_poll_ms / 1000,
            events=metrics.cache_events(),
        )

    # -- lifecycle -------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return bool(self.backbones) and len(self.backbones) == len(self.settings.backbones)

    @property
    def failure(self) -> str | None:
        return self._failure

    def start(self) -> None:
        """Load backbones in the background (so /livez answers meanwhile); watch the registry."""
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load_all(), name="load-backbones")
            self.cache.start()

    async def wait_ready(self) -> None:
        self.start()
        assert self._loading is not None
        await self._loading

    async def _load_all(self) -> None:
        s = self.settings
        for position, name in enumerate(s.backbones, start=1):
            try:
                backbone = await asyncio.to_thread(
                    load_backbone, name, s.artifacts_home, prepared=s.prepared_only(),
                    precision=s.precision, provider=s.provider, intra_op_threads=s.intra_op_threads,
                    lanes=s.ort_lanes or None,
                    image_limits=s.image_limits(), split_layers=s.split_layers,
                    image_split_blocks=s.image_split_blocks,
                )
            except Exception as e:
                # /readyz is open: a code and a pointer, the detail (paths, causes) in the log.
                self._failure = (f"backbone {position} of GRAFT_BACKBONES failed to load "
                                 f"(backbone_load_failed: {type(e).__name__})")
                log.exception("backbone %s failed to load", name)
                return
            self._add(backbone)

    def _add(self, backbone: Backbone) -> None:
        self.backbones[backbone.id] = backbone
        self._batchers[backbone.id] = MicroBatcher(
            backbone.id,
            lambda work, b=backbone: backbone_pass(b, work, self.settings.max_loras_per_batch),
            max_size=self.settings.batch_max_size,
            max_wait_s=self.settings.batch_max_wait_ms / 1000,
            on_batch=lambda n, sec, waits, name=backbone.id: metrics.observe_batch(
                name, n, sec, waits, self.settings.batch_max_size),
            on_handoff=lambda sec: metrics.observe_stage("handoff", sec),
            executor=self._cpu_lane if backbone.provider == "CPUExecutionProvider" else None,
            max_queued=self.settings.max_queued_items,
            cost=(lambda w, b=backbone: b.cost(w.item)) if backbone.kind == "text" else None,
            max_cost=self.settings.max_batch_tokens,
            inline_cost=(self.settings.inline_max_tokens or None) if backbone.provider == "CPUExecutionProvider" else None,
        )
        gate = backbone.int8 or {}
        recipe = gate.get("recipe") or ""
        cosine = f"{gate['measured'][recipe]['min_cosine']:.4f}" if recipe else ""
        metrics.backbone_info.labels(backbone.id, backbone.provider, backbone.precision, recipe, cosine).set(1)

    async def close(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        await self.cache.close()
        for batcher in self._batchers.values():
            await batcher.close()
        self._cpu_lane.shutdown(wait=True)
        self._prepare_pool.shutdown(wait=True)

    # -- backbones -------------------------------------------------------------------

    def require_loaded(self) -> None:
        if self._failure:
            raise Unavailable(f"{self._failure}; see the server log and /readyz")
        if not self.ready:
            raise Unavailable("backbones are still loading; retry shortly (see /readyz)")

    def backbone(self, name: str | None) -> Backbone:
        """The loaded backbone by id; 404 when Graft does not know it, 409 when not loaded here."""
        name = name or self.settings.default_backbone
        if name in self.backbones:
            return self.backbones[name]
        if self._failure:
            raise Unavailable(f"{self._failure}; see the server log and /readyz")
        if not self.ready:
            raise Unavailable("backbones are still loading; retry shortly (see /readyz)")
        if name not in catalog_ids():  # request names never reach the filesystem
            raise NotFound(
                f"unknown backbone {name!r}; loaded here: {sorted(self.backbones)}",
                {"backbone": name, "available": sorted(self.backbones)},
            )
        raise Conflict(
            f"backbone {name!r} is not loaded on this server; add it to GRAFT_BACKBONES",
            {"backbone": name, "available": sorted(self.backbones)},
        )

    def _backbone_ref(self, name: str) -> BackboneRef | None:
        b = self.backbones.get(name)
        if b is None:
            return None
        shape = b.split_shape
        return BackboneRef(b.fingerprint, b.dim, shape.split if shape else None)

    async def prepare_items(self, backbone: Backbone, items: list[Any], input_type: str = "query") -> list[Any]:
        """Items checked and made ready for the backbone (images decoded, off the event
        loop; texts tokenised with the prompt of `input_type`), or a 400/413 naming the first bad one."""
        limit = self.settings.max_batch_items
        if not items:
            raise InvalidInput("inputs is empty: send at least one item")
        if len(items) > limit:
            raise PayloadTooLarge(
                f"{len(items)} inputs in one request; the limit is {limit} (GRAFT_MAX_BATCH_ITEMS): split it",
                {"items": len(items), "limit": limit},
            )
        chars = sum(len(i) for i in items if isinstance(i, str))
        if backbone.kind == "image" or chars > INLINE_TEXT_CHARS:
            # Decoding images, or tokenising many texts (the tokeniser releases the GIL), runs
            # on the prepare pool; a few short texts are tokenised here, cheaper than a hop.
            return await asyncio.get_running_loop().run_in_executor(self._prepare_pool, self._prepare, backbone, items,
                                                                    input_type)
        return self._prepare(backbone, items, input_type)

    def _prepare(self, backbone: Backbone, items: list[Any], input_type: str = "query") -> list[Any]:
        started = time.perf_counter()
        for i, item in enumerate(items):
            if isinstance(item, str) and len(item) > self.settings.max_text_chars:
                raise PayloadTooLarge(
                    f"inputs[{i}] has {len(item)} characters; the limit is "
                    f"{self.settings.max_text_chars} (GRAFT_MAX_TEXT_CHARS)",
                    {"index": i, "chars": len(item), "limit": self.settings.max_text_chars},
                )
        try:
            ready = backbone.prepare_many(items, input_type)
        except ItemError as e:
            raise (PayloadTooLarge if e.too_large else InvalidInput)(f"inputs[{e.index}]: {e}", {"index": e.index}) from None
        metrics.observe_stage("prepare", time.perf_counter() - started)
        return ready

    async def run(self, backbone: Backbone, work: list[Work]) -> list[Row]:
        return await self._batchers[backbone.id].submit(work)

    # -- inference -------------------------------------------------------------------

    async def embed(self, items: list[Any], backbone: str | None = None, input_type: str = "query") -> Embedding:
        """`input_type` "passage" (text backbones): documents to be searched, embedded with the
        catalogue's passage prompt instead of the query prompt (models/text.py)."""
        model = self.backbone(backbone)
        if input_type not in INPUT_TYPES:
            raise InvalidInput(f"input_type must be one of {list(INPUT_TYPES)}, not {input_type!r}", {"field": "input_type"})
        if input_type != "query" and model.kind != "text":
            raise InvalidInput(f"input_type {input_type!r} applies to text backbones; {model.id!r} embeds images",
                               {"field": "input_type"})
        ready = await self.prepare_items(model, items, input_type)
        rows = await self.run(model, [Work(item) for item in ready])
        tokens = sum(model.cost(item) for item in ready) if model.kind == "text" else 0
        return Embedding(model, np.stack([r.vector for r in rows]), [r.truncated for r in rows], tokens)

    async def predict(self, tenant: str, adapter: str, items: list[Any], top_k: int = 1) -> Prediction:
        if top_k < 1:
            raise InvalidInput("top_k must be at least 1")
        self.require_loaded()  # else an adapter's backbone would look "not configured" (409)
        try:
            async with self.cache.lease(tenant, adapter) as head:
                model = self.backbone(head.config.backbone)
                ready = await self.prepare_items(model, items)
                texts = items if head.needs_text else [None] * len(ready)
                rows = await self.run(model, [Work(item, head, text) for item, text in zip(ready, texts)])
        except BackboneNotLoaded as e:
            if self._failure or not self.ready:  # still loading: 503, not "add it to GRAFT_BACKBONES"
                raise Unavailable("backbones are still loading; retry shortly (see /readyz)") from e
            raise
        labels = head.labels
        k = min(top_k, len(labels))
        predictions = []
        for row in rows:
            assert row.scores is not None
            order = np.argsort(-row.scores)[:k]
            top = [{"label": labels[i], "score": float(row.scores[i])} for i in order]
            predictions.append({**top[0], "top": top, "truncated": row.truncated})
        return Prediction(tenant, adapter, head.version, model.id, predictions)
