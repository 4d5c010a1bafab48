"""gRPC beside HTTP: a grpc.aio server in the same process and event loop as the BentoML
worker, calling the same Engine (same backbones, adapter cache and micro-batches).

BentoML's new service API serves no gRPC (bentoml#4634, #5607), hence this server. Requests
are validated by the same pydantic models as HTTP, errors mapped by the same table, and a
call's deadline bounds its wait: an expired call's items leave the batch queue.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from functools import wraps
from typing import Any, Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from service import metrics
from service.auth import Principal
from service.engine import Engine
from service.errors import DOMAIN_ERRORS, DeadlineExceeded, GraftError, InvalidInput, from_validation, translate
from service.items import image_text
from service.proto.graft.v1 import graft_pb2 as pb
from service.proto.graft.v1 import graft_pb2_grpc as pb_grpc
from service.schemas import FinetuneParams, FinetuneRequest, PredictRequest, PromoteRequest, TenantRequest
from service.settings import Settings

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Graft"].full_name  # "graft.v1.Graft"

Handler = Callable[[Any, Any, Principal], Awaitable[Any]]


def rpc(fn: Handler) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """Authentication, deadline, error mapping and metrics for one RPC, in one place."""
    method = fn.__name__

    @wraps(fn)
    async def handler(self: "GraftServicer", request: Any, context: grpc.aio.ServicerContext) -> Any:
        started, code = time.perf_counter(), "OK"
        try:
            metadata = {k.lower(): v for k, v in (context.invocation_metadata() or ())}
            who = await self.engine.tenancy.authenticate(metadata.get("authorization"))
            remaining = context.time_remaining()
            try:
                if remaining is None:
                    return await fn(self, request, who)
                return await asyncio.wait_for(fn(self, request, who), max(remaining, 0.0))
            except TimeoutError as e:
                raise DeadlineExceeded("the call's deadline passed before its items were served") from e
            except ValidationError as e:
                raise from_validation(list(e.errors(include_url=False))) from e
        except (GraftError, *DOMAIN_ERRORS) as e:
            err = translate(e)
            code = err.grpc_status
            await context.abort(getattr(grpc.StatusCode, code), err.message)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        finally:
            metrics.observe_grpc(method, code, time.perf_counter() - started)

    return handler


def _job(job: Any) -> pb.Job:
    d = job.public()
    error = d["error"] or {}
    return pb.Job(
        job_id=d["job_id"], tenant=d["tenant"], adapter=d["adapter"], backbone=d["backbone"], status=d["status"],
        progress=d["progress"], metrics_json=json.dumps(d["metrics"]) if d["metrics"] else "",
        version=d["version"] or 0, promoted=d["promoted"], error_code=error.get("code") or "",
        error_message=error.get("message") or "", attempts=d["attempts"],
    )


def _items(request: pb.EmbedRequest | pb.PredictRequest) -> list[str | bytes]:
    if request.inputs and request.images:
        raise InvalidInput("send texts in inputs or images in images, not both")
    return list(request.images) if request.images else list(request.inputs)


class GraftServicer(pb_grpc.GraftServicer):
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @rpc
    async def Embed(self, request: pb.EmbedRequest, who: Principal) -> pb.EmbedResponse:
        items = _items(request)
        self.engine.tenancy.admit(who)
        out = await self.engine.inference.embed(items, request.backbone or None)
        return pb.EmbedResponse(
            backbone=out.backbone.id, dim=out.backbone.dim,
            embeddings=[pb.Vector(values=row) for row in out.vectors.tolist()],
            truncated=[i for i, t in enumerate(out.truncated) if t],
        )

    @rpc
    async def Predict(self, request: pb.PredictRequest, who: Principal) -> pb.PredictResponse:
        items = _items(request)
        body = PredictRequest(tenant=request.tenant, adapter=request.adapter or "default",
                              inputs=[], top_k=request.top_k or 1)
        who.authorize(body.tenant)
        self.engine.tenancy.admit(who)
        out = await self.engine.inference.predict(body.tenant, body.adapter, items, body.top_k)
        return pb.PredictResponse(
            tenant=out.tenant, adapter=out.adapter, version=out.version, backbone=out.backbone,
            predictions=[
                pb.ItemPrediction(label=p["label"], score=p["score"], truncated=p["truncated"],
                                  top=[pb.Scored(label=t["label"], score=t["score"]) for t in p["top"]])
                for p in out.predictions
            ],
        )

    @rpc
    async def FineTune(self, request: pb.FineTuneRequest, who: Principal) -> pb.Job:
        params = {f.name: value for f, value in request.params.ListFields()} if request.HasField("params") else {}
        body = FinetuneRequest(
            tenant=request.tenant, adapter=request.adapter or "default", backbone=request.backbone or None,
            examples=[{"image": image_text(e.image), "label": e.label} if e.image else {"text": e.text, "label": e.label}
                      for e in request.examples],
            params=FinetuneParams.model_validate(params, strict=False),
        )
        assert body.params is not None
        who.authorize(body.tenant)
        job = await self.engine.jobs.submit(body.tenant, body.adapter, body.backbone, body.examples,
                                         body.params.model_dump())
        return _job(job)

    @rpc
    async def GetJob(self, request: pb.GetJobRequest, who: Principal) -> pb.Job:
        return _job(await self.engine.jobs.get(request.job_id, who.tenant))

    @rpc
    async def CancelJob(self, request: pb.CancelJobRequest, who: Principal) -> pb.Job:
        return _job(await self.engine.jobs.cancel(request.job_id, who.tenant))

    @rpc
    async def ListAdapters(self, request: pb.ListAdaptersRequest, who: Principal) -> pb.ListAdaptersResponse:
        tenant = TenantRequest(tenant=request.tenant).tenant
        who.authorize(tenant)
        infos = await self.engine.versions.list_adapters(tenant)
        return pb.ListAdaptersResponse(tenant=tenant, adapters=[
            pb.AdapterSummary(adapter=i.adapter, backbone=i.backbone, active_version=i.active_version or 0,
                              versions=i.versions)
            for i in infos
        ])

    @rpc
    async def Promote(self, request: pb.PromoteRequest, who: Principal) -> pb.PromoteResponse:
        tenant = TenantRequest(tenant=request.tenant).tenant
        adapter = TenantRequest(tenant=request.adapter).tenant  # same name rule
        version = PromoteRequest(version=request.version).version
        who.authorize(tenant)
        active = await self.engine.versions.promote(tenant, adapter, version)
        return pb.PromoteResponse(tenant=tenant, adapter=adapter, active_version=active)


class GrpcServer:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        limit = int(settings.grpc_max_message_mb * 1024 * 1024)
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ])
        pb_grpc.add_GraftServicer_to_server(GraftServicer(engine), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection([SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        address = f"{self.settings.host}:{self.settings.grpc_port}"
        self.server.add_insecure_port(address)
        await self.server.start()
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self._watch = asyncio.get_running_loop().create_task(self._follow_readiness(), name="grpc-health")
        log.info("gRPC listening on %s", address)

    async def _follow_readiness(self) -> None:
        """SERVING once the Engine is ready (backbones loaded); NOT_SERVING if loading failed."""
        await self.engine.wait_ready()
        if self.engine.ready:
            for name in ("", SERVICE):
                await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace: float = 5.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
