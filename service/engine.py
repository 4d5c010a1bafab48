"""The transport-agnostic core, wired once: HTTP (service/http.py) and gRPC
(service/grpc_server.py) call the same four parts of one Engine.

    engine.inference  backbones, micro-batches, adapter cache: embed, predict
    engine.tenancy    tenants, keys, authentication, rate limits
    engine.versions   zero-shot adapters, versions, promote, rollback, delete
    engine.jobs       fine-tune jobs: submit, status, events, cancel, list
"""
from __future__ import annotations

from typing import Any

from adapters.registry import Registry, default_url
from service.auth import Principal, load_signing_key
from service.inference import Inference
from service.jobs import Jobs
from service.settings import Settings
from service.tenancy import Tenancy
from service.versions import Versions


class Engine:
    def __init__(self, settings: Settings, registry: Registry | None = None) -> None:
        self.settings = settings
        self.registry = registry or Registry(settings.database_url or default_url(settings.home),
                                             signing_key=load_signing_key(settings))
        self.inference = Inference(settings, self.registry)
        self.tenancy = Tenancy(settings, self.registry)
        self.jobs = Jobs(settings, self.registry, self.inference)
        self.versions = Versions(settings, self.registry, self.inference, self.jobs.queue)

    @property
    def ready(self) -> bool:
        return self.inference.ready

    def start(self) -> None:
        """Load backbones in the background (so /livez answers meanwhile); watch the registry."""
        self.inference.start()

    async def wait_ready(self) -> None:
        await self.inference.wait_ready()

    async def admit(self, principal: Principal, items: int) -> None:
        """An inference request may go on: the backbones are loaded (else 503, and the
        tenant's rate limit is not charged for a request that cannot be served), and the
        tenant's rate limit takes its items (else 429)."""
        self.inference.require_loaded()
        await self.tenancy.admit(principal, items)

    def status(self) -> dict[str, Any]:
        """ready, loading, failed; or degraded: serving resident adapters, registry unreachable."""
        inference = self.inference
        state = "ready" if inference.ready else ("failed" if inference.failure else "loading")
        if state == "ready" and not inference.cache.registry_ok:
            state = "degraded"
        body: dict[str, Any] = {
            "status": state,
            "registry": "ok" if inference.cache.registry_ok else "unreachable",
            "backbones": [b.describe() for b in inference.backbones.values()],
        }
        if inference.failure:
            body["error"] = inference.failure
        return body

    async def close(self) -> None:
        await self.inference.close()
        await self.tenancy.close()
        self.registry.close()
