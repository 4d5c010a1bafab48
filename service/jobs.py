"""Fine-tune jobs as the API sees them: validate and queue, status, events, cancel, list.
Worker processes (service/worker.py) train them.
"""
from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from adapters.jobs import Job, JobQueue
from adapters.lexical import LEXICAL_METHODS
from adapters.pipeline import DEEP_METHODS, InvalidParams, lora_params, setfit_params, unfreeze_params
from adapters.registry import Registry
from service.errors import InvalidInput, NotFound, PayloadTooLarge
from service.inference import Inference
from service.settings import Settings
from service.uploads import check_examples


class Jobs:
    def __init__(self, settings: Settings, registry: Registry, inference: Inference) -> None:
        self.settings = settings
        self.registry = registry
        self.inference = inference
        self.queue = JobQueue(registry, lease_s=settings.job_lease_s, max_attempts=settings.job_max_attempts)

    async def submit(self, tenant: str, adapter: str, backbone: str | None,
                     examples: list[Any], params: dict[str, Any]) -> Job:
        """Validate and queue a job; a worker process trains it (202 with the job id)."""
        if not await asyncio.to_thread(self.registry.tenant_exists, tenant):
            raise NotFound(f"unknown tenant {tenant!r}: create it with POST /v1/tenants")
        model = self.inference.backbone(backbone)
        if params.get("augment") and model.kind != "image":
            raise InvalidInput(f"params.augment applies to image backbones; {model.id!r} embeds text")
        method = params.get("method")
        if method in LEXICAL_METHODS and model.kind != "text":
            methods = ["head", "unfreeze"] if model.split_shape is not None else ["head"]
            raise InvalidInput(f"method {method} reads texts; {model.id!r} is an image backbone: use method "
                               + " or ".join(methods), {"methods": methods})
        if method in DEEP_METHODS:
            split = model.split_shape is not None
            if model.kind == "image" and method != "unfreeze":
                raise InvalidInput(
                    f"method {method} needs a text backbone split for deep adapters; {model.id!r} is an image "
                    "backbone: "
                    "use method head" + (" or unfreeze (LoRA on convolutions is not offered)" if split else ""),
                    {"methods": ["head", "unfreeze"] if split else ["head"]})
            if not split and getattr(model, "deep_refusal", None):
                raise InvalidInput(str(model.deep_refusal), {"methods": ["head"]})
            if not split:
                raise InvalidInput(
                    f"method {method} needs a backbone split for deep adapters; {model.id!r} is not split ("
                    + ("GRAFT_IMAGE_SPLIT_BLOCKS" if model.kind == "image" else "GRAFT_SPLIT_LAYERS")
                    + " is 0): use method head", {"methods": ["head"]})
            try:
                if method == "lora":
                    lora_params(params, model.split_shape)
                elif method == "setfit":
                    setfit_params(params, model.split_shape)
                else:
                    unfreeze_params(params, model.split_shape, self.settings.max_unfreeze_bytes)
            except InvalidParams as e:
                raise InvalidInput(str(e)) from None
            if len(examples) > self.settings.max_lora_examples:
                raise PayloadTooLarge(
                    f"{len(examples)} examples; method {method} takes at most {self.settings.max_lora_examples} "
                    "(GRAFT_MAX_LORA_EXAMPLES: its hidden states are held in memory): use method head, or fewer",
                    {"examples": len(examples), "limit": self.settings.max_lora_examples})
        clean = await asyncio.to_thread(
            check_examples, examples, kind=model.kind, check=model.check,
            max_examples=self.settings.max_train_examples, max_chars=self.settings.max_text_chars,
        )
        if method == "setfit":
            counts = Counter(e["label"] for e in clean)
            few = sorted(label for label, n in counts.items() if n < 3)
            if few:
                raise InvalidInput("method setfit pairs examples of the same label: it needs at least 3 examples of "
                                   f"each label (2 to train on, 1 to validate); fewer for {few}",
                                   {"labels": dict(counts)})
        return await asyncio.to_thread(
            self.queue.submit, tenant, adapter, model.id, clean, params,
            max_queued=self.settings.max_queued_jobs, max_per_tenant=self.settings.max_tenant_jobs,
        )

    # Jobs are looked up within the caller's tenant (None: the admin sees all).
    async def get(self, job_id: str, tenant: str | None) -> Job:
        return await asyncio.to_thread(self.queue.get, job_id, tenant)

    async def events(self, job_id: str, tenant: str | None) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.queue.events, job_id, tenant)

    async def cancel(self, job_id: str, tenant: str | None) -> Job:
        return await asyncio.to_thread(self.queue.cancel, job_id, tenant)

    async def for_tenant(self, tenant: str) -> list[Job]:
        return await asyncio.to_thread(self.queue.list, tenant)

    def counts(self) -> dict[str, int]:
        """Jobs by status (for the metrics scrape)."""
        return self.queue.counts()
