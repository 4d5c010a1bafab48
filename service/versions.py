"""Adapter versions: zero-shot creation, listing, promote, rollback and delete.

Writes go to the registry; this replica's adapter cache is refreshed at once, the others'
within a registry poll.
"""
from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from adapters import card as cards
from adapters import format as adapter_format
from adapters import zero_shot
from adapters.jobs import JobQueue
from adapters.registry import AdapterInfo, Registry, VersionInfo
from service.errors import InvalidInput, NotFound
from service.inference import Inference, Work
from service.settings import Settings


class Versions:
    def __init__(self, settings: Settings, registry: Registry, inference: Inference, jobs: JobQueue) -> None:
        self.settings = settings
        self.registry = registry
        self.inference = inference
        self.cache = inference.cache
        self.jobs = jobs

    async def create_zero_shot(
        self, tenant: str, adapter: str, labels: list[str],
        descriptions: dict[str, str] | None = None, backbone: str | None = None,
    ) -> int:
        """Version 1 of a new adapter: a head from the backbone's embeddings of the labels."""
        zero_shot.check_labels(labels, descriptions)
        if not await asyncio.to_thread(self.registry.tenant_exists, tenant):
            raise NotFound(f"unknown tenant {tenant!r}: create it with POST /v1/tenants")
        model = self.inference.backbone(backbone)
        tower = getattr(model, "text_tower", None)
        if tower is not None:  # CLIP-style: label prompts through the text tower, the model's logit scale
            texts = tower.texts(labels, descriptions)
            vectors = await asyncio.to_thread(tower.embed, texts)
            config, tensors = zero_shot.build(
                model.id, model.fingerprint, labels, vectors, descriptions, scale=tower.logit_scale, texts=texts,
                extra={"prompt": tower.prompt, "tower": "text"})
            config, weights = adapter_format.encode(config, tensors)
            return await asyncio.to_thread(self.registry.create_adapter, tenant, adapter, config, weights,
                                           max_adapters=self.settings.max_adapters_per_tenant)
        if model.kind != "text":
            raise InvalidInput(
                f"zero-shot adapters embed the label names as text, and backbone {model.id!r} embeds "
                f"{model.kind}s without a text tower (a CLIP-style text-image backbone has one): train an adapter "
                "from labeled examples with POST /v1/finetune",
                {"backbone": model.id, "kind": model.kind},
            )
        texts = zero_shot.label_texts(labels, descriptions)
        ready = await self.inference.prepare_items(model, texts)
        rows = await self.inference.run(model, [Work(t) for t in ready])
        config, tensors = zero_shot.build(
            model.id, model.fingerprint, labels, np.stack([r.vector for r in rows]), descriptions
        )
        config, weights = adapter_format.encode(config, tensors)
        return await asyncio.to_thread(self.registry.create_adapter, tenant, adapter, config, weights,
                                       max_adapters=self.settings.max_adapters_per_tenant)

    async def list_adapters(self, tenant: str) -> list[AdapterInfo]:
        return await asyncio.to_thread(self.registry.list_adapters, tenant)

    async def list_versions(self, tenant: str, adapter: str) -> list[VersionInfo]:
        return await asyncio.to_thread(self.registry.list_versions, tenant, adapter)

    async def card(self, tenant: str, adapter: str, version: int) -> dict[str, Any]:
        """The version's model card (adapters/card.py); NotFound for a version it does not have."""
        versions = await asyncio.to_thread(self.registry.list_versions, tenant, adapter)
        found = next((v for v in versions if v.version == version), None)
        if found is None:
            raise NotFound(f"adapter {adapter!r} of tenant {tenant!r} has no version {version}")
        card = cards.build(tenant, adapter, version, found.config, active=found.active, created_at=found.created_at)
        if card["backbone"]["licence"] is None:  # a version made without a job (zero-shot): the loaded backbone's
            loaded = self.inference.backbones.get(found.config.backbone)
            card["backbone"]["licence"] = loaded.licence if loaded is not None else None
        return card

    async def promote(self, tenant: str, adapter: str, version: int, *, allow_dropped_labels: bool = False) -> int:
        v = await asyncio.to_thread(self.registry.promote, tenant, adapter, version,
                                    allow_dropped_labels=allow_dropped_labels)
        await self.cache.refresh()  # this replica serves it at once; others within a poll
        return v

    async def rollback(self, tenant: str, adapter: str) -> int:
        v = await asyncio.to_thread(self.registry.rollback, tenant, adapter)
        await self.cache.refresh()
        return v

    async def delete_adapter(self, tenant: str, adapter: str) -> None:
        """Gone from every replica within a poll; its queued and running jobs are cancelled."""
        await asyncio.to_thread(self.registry.delete_adapter, tenant, adapter)
        await asyncio.to_thread(self.jobs.cancel_for_adapter, tenant, adapter)
        await self.cache.refresh()
