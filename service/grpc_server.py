"""gRPC beside HTTP: a grpc.aio server in the same process and event loop as the BentoML
worker, calling the same Engine (same backbones, adapter cache and micro-batches).

BentoML's new service API serves no gRPC (bentoml#4634, #5607), hence this server. Each RPC
is the twin of one /v1 HTTP route (tests/unit/test_grpc_parity.py keeps them paired): the same
authorization, the same pydantic models for validation (a path's fields included), the same
Engine call and the same error table. A call's deadline bounds its wait: an expired call's
items leave the batch queue.
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

from adapters.keys import KeyInfo
from adapters.registry import VersionInfo
from service import cards, metrics
from service.auth import Principal
from service.engine import Engine
from service.errors import DOMAIN_ERRORS, DeadlineExceeded, GraftError, InvalidInput, from_validation, translate
from service.items import image_text
from service.proto.graft.v1 import graft_pb2 as pb
from service.proto.graft.v1 import graft_pb2_grpc as pb_grpc
from service.schemas import (
    AdapterRef, CreateAdapterRequest, FinetuneParams, FinetuneRequest, IssueKeyRequest, KeyRef, PredictRequest, PromoteRequest,
    TenantRequest,
)
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
            peer = context.peer() or ""  # "ipv4:127.0.0.1:54321": the address without the port
            who = await self.engine.tenancy.authenticate(metadata.get("authorization"), peer.rsplit(":", 1)[0] or None)
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
        except Exception:  # a bug: INTERNAL to the caller and in the metrics, the detail in the log
            code = "INTERNAL"
            log.exception("gRPC %s failed", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; the server log has the detail")
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
        created_at=d["created_at"] or "", finished_at=d["finished_at"] or "",
    )


def _event(event: dict[str, Any]) -> pb.JobEvent:
    """HTTP's event object: n, at and kind as fields, whatever else it says as JSON."""
    data = {k: v for k, v in event.items() if k not in ("n", "at", "kind")}
    return pb.JobEvent(n=event["n"], at=event["at"], kind=event["kind"], data_json=json.dumps(data))


def _version(v: VersionInfo) -> pb.VersionDetail:
    c = v.config
    return pb.VersionDetail(
        version=v.version, active=v.active, created_at=v.created_at, backbone=c.backbone, head=c.head,
        labels=c.labels, metrics_json=json.dumps(c.metrics), training_json=json.dumps(c.training),
        parent_version=c.parent_version or 0, method=c.method, lora_json=json.dumps(c.lora) if c.lora else "",
        unfreeze_json=json.dumps(c.unfreeze) if c.unfreeze else "", bytes=v.bytes,
    )


def _keys(tenant: str, keys: list[KeyInfo]) -> pb.ListKeysResponse:
    return pb.ListKeysResponse(tenant=tenant, keys=[
        pb.KeyDetail(key_id=k.key_id, created_at=k.created_at, revoked=k.revoked, expires_at=k.expires_at or "")
        for k in keys])


def _items(request: pb.EmbedRequest | pb.PredictRequest) -> list[str | bytes]:
    if request.inputs and request.images:
        raise InvalidInput("send texts in inputs or images in images, not both")
    return list(request.images) if request.images else list(request.inputs)


class GraftServicer(pb_grpc.GraftServicer):
    """One method per RPC, each the twin of an HTTP route in service/http.py: checks in the same order."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @rpc
    async def Embed(self, request: pb.EmbedRequest, who: Principal) -> pb.EmbedResponse:
        items = _items(request)
        await self.engine.admit(who, len(items))
        out = await self.engine.inference.embed(items, request.backbone or None, request.input_type or "query")
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
        await self.engine.admit(who, len(items))
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
        params = {f.name: value if isinstance(value, (str, bytes, int, float, bool)) else list(value)  # repeated
                  for f, value in request.params.ListFields()} if request.HasField("params") else {}
        body = FinetuneRequest(
            tenant=request.tenant, adapter=request.adapter or "default", backbone=request.backbone or None,
            examples=[{**({"image": image_text(e.image)} if e.image else {"text": e.text}), "label": e.label,
                       **({"group": e.group} if e.group else {})} for e in request.examples],
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
    async def GetJobEvents(self, request: pb.GetJobEventsRequest, who: Principal) -> pb.GetJobEventsResponse:
        events = await self.engine.jobs.events(request.job_id, who.tenant)
        return pb.GetJobEventsResponse(job_id=request.job_id, events=[_event(e) for e in events])

    @rpc
    async def ListJobs(self, request: pb.ListJobsRequest, who: Principal) -> pb.ListJobsResponse:
        tenant = TenantRequest(tenant=request.tenant).tenant
        who.authorize(tenant)
        jobs = await self.engine.jobs.for_tenant(tenant)
        return pb.ListJobsResponse(tenant=tenant, jobs=[_job(j) for j in jobs])

    @rpc
    async def CreateAdapter(self, request: pb.CreateAdapterRequest, who: Principal) -> pb.CreateAdapterResponse:
        body = CreateAdapterRequest(
            tenant=request.tenant, adapter=request.adapter or "default", backbone=request.backbone or None,
            labels=list(request.labels), descriptions=dict(request.descriptions) or None,
        )
        who.authorize(body.tenant)
        version = await self.engine.versions.create_zero_shot(body.tenant, body.adapter, body.labels,
                                                              body.descriptions, body.backbone)
        return pb.CreateAdapterResponse(tenant=body.tenant, adapter=body.adapter, version=version,
                                        backbone=body.backbone or self.engine.settings.default_backbone,
                                        labels=body.labels)

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
    async def ListVersions(self, request: pb.ListVersionsRequest, who: Principal) -> pb.ListVersionsResponse:
        ref = AdapterRef(tenant=request.tenant, adapter=request.adapter)
        who.authorize(ref.tenant)
        versions = await self.engine.versions.list_versions(ref.tenant, ref.adapter)
        return pb.ListVersionsResponse(tenant=ref.tenant, adapter=ref.adapter,
                                       versions=[_version(v) for v in versions])

    @rpc
    async def Promote(self, request: pb.PromoteRequest, who: Principal) -> pb.PromoteResponse:
        ref = AdapterRef(tenant=request.tenant, adapter=request.adapter)
        who.authorize(ref.tenant)  # before the version, as HTTP authorizes before reading the body
        body = PromoteRequest(version=request.version, allow_dropped_labels=request.allow_dropped_labels)
        active = await self.engine.versions.promote(ref.tenant, ref.adapter, body.version,
                                                    allow_dropped_labels=body.allow_dropped_labels)
        return pb.PromoteResponse(tenant=ref.tenant, adapter=ref.adapter, active_version=active)

    async def _card(self, request: pb.GetVersionCardRequest, who: Principal) -> dict[str, Any]:
        ref = AdapterRef(tenant=request.tenant, adapter=request.adapter)
        who.authorize(ref.tenant)
        if request.version < 1:
            raise InvalidInput("version: must be 1 or more")
        return await self.engine.versions.card(ref.tenant, ref.adapter, request.version)

    @rpc
    async def GetVersionCard(self, request: pb.GetVersionCardRequest, who: Principal) -> pb.VersionCard:
        if request.format not in ("", "json", "markdown"):
            raise InvalidInput('format: "json" (default) or "markdown"')
        card = await self._card(request, who)
        if request.format == "markdown":
            return pb.VersionCard(markdown=await asyncio.to_thread(lambda: cards.markdown(card, cards.png(card))))
        return pb.VersionCard(card_json=json.dumps(card))

    @rpc
    async def GetVersionCardImage(self, request: pb.GetVersionCardRequest, who: Principal) -> pb.VersionCardImage:
        card = await self._card(request, who)
        return pb.VersionCardImage(png=await asyncio.to_thread(cards.png, card))

    @rpc
    async def Rollback(self, request: pb.RollbackRequest, who: Principal) -> pb.PromoteResponse:
        ref = AdapterRef(tenant=request.tenant, adapter=request.adapter)
        who.authorize(ref.tenant)
        active = await self.engine.versions.rollback(ref.tenant, ref.adapter)
        return pb.PromoteResponse(tenant=ref.tenant, adapter=ref.adapter, active_version=active)

    @rpc
    async def DeleteAdapter(self, request: pb.DeleteAdapterRequest, who: Principal) -> pb.DeleteAdapterResponse:
        ref = AdapterRef(tenant=request.tenant, adapter=request.adapter)
        who.authorize(ref.tenant)
        await self.engine.versions.delete_adapter(ref.tenant, ref.adapter)
        return pb.DeleteAdapterResponse(tenant=ref.tenant, adapter=ref.adapter, deleted=True)

    # -- tenants and keys: the admin's alone, as over HTTP ------------------------------------

    @rpc
    async def CreateTenant(self, request: pb.CreateTenantRequest, who: Principal) -> pb.CreateTenantResponse:
        who.require_admin()  # before validating: a tenant's key learns nothing of the rules
        tenant = TenantRequest(tenant=request.tenant).tenant
        key = await self.engine.tenancy.create_tenant(tenant)
        return pb.CreateTenantResponse(tenant=tenant, api_key=key)

    @rpc
    async def DeleteTenant(self, request: pb.DeleteTenantRequest, who: Principal) -> pb.DeleteTenantResponse:
        who.require_admin()
        tenant = TenantRequest(tenant=request.tenant).tenant
        removed = await self.engine.tenancy.delete_tenant(tenant)
        await self.engine.inference.cache.refresh()
        return pb.DeleteTenantResponse(tenant=tenant, removed=removed)

    @rpc
    async def IssueKey(self, request: pb.IssueKeyRequest, who: Principal) -> pb.IssueKeyResponse:
        tenant = TenantRequest(tenant=request.tenant).tenant  # HTTP checks the path before the handler runs
        who.require_admin()
        body = IssueKeyRequest(expires_in_s=request.expires_in_s or None)
        info, key = await self.engine.tenancy.issue_key(tenant, body.expires_in_s)
        return pb.IssueKeyResponse(tenant=tenant, key_id=info.key_id, api_key=key, expires_at=info.expires_at or "")

    @rpc
    async def ListKeys(self, request: pb.ListKeysRequest, who: Principal) -> pb.ListKeysResponse:
        tenant = TenantRequest(tenant=request.tenant).tenant
        who.require_admin()
        return _keys(tenant, await self.engine.tenancy.list_keys(tenant))

    @rpc
    async def RevokeKey(self, request: pb.RevokeKeyRequest, who: Principal) -> pb.ListKeysResponse:
        ref = KeyRef(tenant=request.tenant, key_id=request.key_id)
        who.require_admin()
        await self.engine.tenancy.revoke_key(ref.tenant, ref.key_id)
        return _keys(ref.tenant, await self.engine.tenancy.list_keys(ref.tenant))


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
