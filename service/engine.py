"""The transport-agnostic core: backbones, micro-batching, validation of items.

HTTP (and the gRPC server to come) call the Engine; it holds no transport logic.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from models import Backbone, EmbedResult, load_backbone
from models.catalog import catalog_ids
from service import metrics
from service.batching import MicroBatcher
from service.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge, Unavailable
from service.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Embedding:
    backbone: Backbone
    result: EmbedResult


class Engine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.backbones: dict[str, Backbone] = {}
        self._batchers: dict[str, MicroBatcher] = {}
        self._failure: str | None = None
        self._loading: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return bool(self.backbones) and len(self.backbones) == len(self.settings.backbones)

    def start(self) -> None:
        """Load the backbones in the background so /livez answers while they load."""
        if self._loading is None:
            self._loading = asyncio.get_running_loop().create_task(self._load_all(), name="load-backbones")

    async def wait_ready(self) -> None:
        self.start()
        assert self._loading is not None
        await self._loading

    async def _load_all(self) -> None:
        s = self.settings
        for name in s.backbones:
            try:
                backbone = await asyncio.to_thread(
                    load_backbone, name, s.home,
                    precision=s.precision, provider=s.provider, intra_op_threads=s.intra_op_threads,
                )
            except Exception as e:
                self._failure = f"backbone {name!r} failed to load: {e}"
                log.exception("backbone %s failed to load", name)
                return
            self._add(backbone)

    def _add(self, backbone: Backbone) -> None:
        self.backbones[backbone.id] = backbone
        self._batchers[backbone.id] = MicroBatcher(
            backbone.id,
            backbone.embed,
            max_size=self.settings.batch_max_size,
            max_wait_s=self.settings.batch_max_wait_ms / 1000,
            on_batch=lambda n, sec, name=backbone.id: metrics.observe_batch(name, n, sec),
        )
        metrics.backbone_info.labels(backbone.id, backbone.provider, backbone.precision).set(1)

    def status(self) -> dict[str, Any]:
        state = "ready" if self.ready else ("failed" if self._failure else "loading")
        body: dict[str, Any] = {"status": state, "backbones": [b.describe() for b in self.backbones.values()]}
        if self._failure:
            body["error"] = self._failure
        return body

    async def close(self) -> None:
        if self._loading is not None and not self._loading.done():
            self._loading.cancel()
        for batcher in self._batchers.values():
            await batcher.close()

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

    def validate_items(self, backbone: Backbone, items: list[Any]) -> None:
        limit = self.settings.max_batch_items
        if not items:
            raise InvalidInput("inputs is empty: send at least one item")
        if len(items) > limit:
            raise PayloadTooLarge(
                f"{len(items)} inputs in one request; the limit is {limit} (GRAFT_MAX_BATCH_ITEMS): split it",
                {"items": len(items), "limit": limit},
            )
        for i, item in enumerate(items):
            problem = backbone.check_item(item)
            if problem:
                raise InvalidInput(f"inputs[{i}]: {problem}", {"index": i})
            if isinstance(item, str) and len(item) > self.settings.max_text_chars:
                raise PayloadTooLarge(
                    f"inputs[{i}] has {len(item)} characters; the limit is "
                    f"{self.settings.max_text_chars} (GRAFT_MAX_TEXT_CHARS)",
                    {"index": i, "chars": len(item), "limit": self.settings.max_text_chars},
                )

    async def embed(self, items: list[Any], backbone: str | None = None) -> Embedding:
        model = self.backbone(backbone)
        self.validate_items(model, items)
        result = await self._batchers[model.id].submit(items)
        return Embedding(model, result)
