"""The BentoML service: a thin HTTP layer over the Engine.

Routes live in a FastAPI app mounted into the BentoML service, so the contract (paths,
JSON error bodies, 400 rather than 422) is ours while BentoML runs the server, the worker
processes, /livez and /metrics. Heavy work (backbone export and loading) starts after the
server is up, never at import, so /livez answers at once and /readyz turns ready later.
"""
from __future__ import annotations

import logging
from typing import Any, TypeVar

import bentoml
import orjson
from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.engine import Engine
from service.errors import DOMAIN_ERRORS, GraftError, InvalidInput, PayloadTooLarge, from_validation, translate
from service.schemas import (
    NAME_PATTERN, ActiveVersion, AdapterList, AdapterSummary, CreateAdapterRequest, CreatedAdapter, Deleted,
    EmbedRequest, EmbedResponse, ErrorResponse, FinetuneParams, FinetuneRequest, JobEvents, JobList, JobStatus,
    PredictRequest, PredictResponse, PromoteRequest, TenantRequest,
    TenantResponse, VersionDetail, VersionList,
)
from service.settings import get_settings
from service.uploads import parse_csv, parse_jsonl
from service.grpc_server import GrpcServer
from service.worker import WorkerPool

log = logging.getLogger("graft")

settings = get_settings()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 404, 409, 413, 503)
}

app = FastAPI(
    title="Graft",
    version="1",
    description="Frozen pretrained backbones with per-tenant adapters, served on ONNX Runtime.",
)


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")


def _error(err: GraftError) -> Response:
    response = _json(err.to_dict(), err.status)
    response.headers.update(err.headers)
    return response


@app.exception_handler(GraftError)
async def _graft_error(_: Request, err: GraftError) -> Response:
    return _error(err)


for _kind in DOMAIN_ERRORS:
    app.add_exception_handler(_kind, lambda _req, err: _error(translate(err)))  # type: ignore[arg-type]

TenantPath = Path(pattern=NAME_PATTERN, description="tenant id")
AdapterPath = Path(pattern=NAME_PATTERN, description="adapter name")


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, err: RequestValidationError) -> Response:
    return _error(from_validation(list(err.errors())))


M = TypeVar("M", bound=BaseModel)


async def parse(model: type[M], request: Request) -> M:
    """The JSON body as `model`, whatever the Content-Type says (curl -d sends a form type)."""
    try:
        return model.model_validate_json(await request.body())
    except ValidationError as e:
        raise from_validation(list(e.errors(include_url=False))) from e


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it passes `limit` bytes (whatever Content-Length claims)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body has {declared} bytes; the limit is {limit} (GRAFT_MAX_UPLOAD_MB)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body passes the limit of {limit} bytes (GRAFT_MAX_UPLOAD_MB)")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's form parser reads the cached body from here
    return body


async def finetune_request(request: Request) -> FinetuneRequest:
    """Inline JSON, or multipart with form fields and a JSONL or CSV `file`."""
    body = await read_limited(request, int(settings.max_upload_mb * 1024 * 1024))
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            return FinetuneRequest.model_validate_json(body)
        except ValidationError as e:
            raise from_validation(list(e.errors(include_url=False))) from e
    form = await request.form()
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise InvalidInput("a multipart fine-tune request needs a file field `file` (JSONL or CSV)")
    data = await upload.read()
    name = (upload.filename or "").lower()
    examples = parse_csv(data) if name.endswith(".csv") or "csv" in (upload.content_type or "") else parse_jsonl(data)
    fields: dict[str, Any] = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
    try:
        if "params" in fields:
            fields["params"] = FinetuneParams.model_validate_json(fields["params"])
        return FinetuneRequest.model_validate({**fields, "examples": examples}, strict=False)
    except ValidationError as e:
        raise from_validation(list(e.errors(include_url=False))) from e


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI description of a body that `parse` reads."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}},
        }
    }


def _route_logs_through_bentoml() -> None:
    """Our INFO logs (provider and precision in use, artifact builds) in BentoML's format."""
    handlers = logging.getLogger("bentoml").handlers
    for name in ("graft", "models", "service"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if handlers and not logger.handlers:
            for handler in handlers:
                logger.addHandler(handler)
            logger.propagate = False


class ReadyzMiddleware:
    """Answers /readyz with the Engine's state (provider, precision) instead of BentoML's
    empty body: 200 once every backbone is loaded, 503 while loading or after a failure."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/readyz":
            try:
                engine: Engine = bentoml.get_current_service().engine
                status = engine.status()
            except Exception:  # the service instance is not created yet
                status = {"status": "starting", "backbones": []}
            response = JSONResponse(status, 200 if status["status"] == "ready" else 503)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


@bentoml.service(
    name="graft",
    workers=settings.workers,
    traffic={"timeout": 60},
    http={"host": settings.host, "port": settings.port},
)
@bentoml.asgi_app(app, path="/")
class Graft:
    def __init__(self) -> None:
        _route_logs_through_bentoml()
        self.engine = Engine(settings)
        self.workers = WorkerPool(settings)
        self.grpc: GrpcServer | None = None

    @bentoml.on_startup
    async def _start(self) -> None:
        self.engine.start()
        if settings.grpc_port:  # every HTTP worker serves gRPC too (SO_REUSEPORT shares the port)
            self.grpc = GrpcServer(self.engine, settings)
            await self.grpc.start()
        if bentoml.server_context.worker_index in (None, 1):  # one pool, whatever GRAFT_WORKERS is
            self.workers.start()

    @bentoml.on_shutdown
    async def _close(self) -> None:
        if self.grpc is not None:
            await self.grpc.stop()
        await self.workers.stop()
        await self.engine.close()

    def __is_ready__(self) -> bool:
        return self.engine.ready

    @app.post("/v1/embed", response_model=EmbedResponse, responses=ERRORS, openapi_extra=json_body(EmbedRequest))
    async def embed(self, request: Request) -> Response:
        """Embed texts with a frozen backbone; rows are L2-normalised."""
        body = await parse(EmbedRequest, request)
        out = await self.engine.embed(body.inputs, body.backbone)
        return _json(
            {
                "backbone": out.backbone.id,
                "dim": out.backbone.dim,
                "embeddings": out.vectors,
                "truncated": [i for i, t in enumerate(out.truncated) if t],
            }
        )

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=json_body(PredictRequest))
    async def predict(self, request: Request) -> Response:
        """Classify items with a tenant's adapter (its active version) on the shared backbone."""
        body = await parse(PredictRequest, request)
        out = await self.engine.predict(body.tenant, body.adapter, body.inputs, body.top_k)
        return _json(
            {"tenant": out.tenant, "adapter": out.adapter, "version": out.version,
             "backbone": out.backbone, "predictions": out.predictions}
        )

    @app.post("/v1/tenants", status_code=201, response_model=TenantResponse, responses=ERRORS,
              openapi_extra=json_body(TenantRequest))
    async def create_tenant(self, request: Request) -> Response:
        body = await parse(TenantRequest, request)
        await self.engine.create_tenant(body.tenant)
        return _json({"tenant": body.tenant}, 201)

    @app.post("/v1/adapters", status_code=201, response_model=CreatedAdapter, responses=ERRORS,
              openapi_extra=json_body(CreateAdapterRequest))
    async def create_adapter(self, request: Request) -> Response:
        """A zero-shot adapter from label names: version 1, serving at once."""
        body = await parse(CreateAdapterRequest, request)
        version = await self.engine.create_zero_shot(
            body.tenant, body.adapter, body.labels, body.descriptions, body.backbone
        )
        backbone = body.backbone or settings.default_backbone
        return _json({"tenant": body.tenant, "adapter": body.adapter, "version": version,
                      "backbone": backbone, "labels": body.labels}, 201)

    @app.get("/v1/tenants/{tenant}/adapters", response_model=AdapterList, responses=ERRORS)
    async def list_adapters(self, tenant: str = TenantPath) -> AdapterList:
        infos = await self.engine.list_adapters(tenant)
        return AdapterList(tenant=tenant, adapters=[
            AdapterSummary(adapter=i.adapter, backbone=i.backbone, active_version=i.active_version, versions=i.versions)
            for i in infos
        ])

    @app.get("/v1/tenants/{tenant}/adapters/{adapter}/versions", response_model=VersionList, responses=ERRORS)
    async def list_versions(self, tenant: str = TenantPath, adapter: str = AdapterPath) -> VersionList:
        versions = await self.engine.list_versions(tenant, adapter)
        return VersionList(tenant=tenant, adapter=adapter, versions=[
            VersionDetail(
                version=v.version, active=v.active, created_at=v.created_at, backbone=v.config.backbone,
                head=v.config.head, labels=v.config.labels, metrics=v.config.metrics,
                training=v.config.training, parent_version=v.config.parent_version,
            )
            for v in versions
        ])

    @app.post("/v1/tenants/{tenant}/adapters/{adapter}/promote", response_model=ActiveVersion, responses=ERRORS,
              openapi_extra=json_body(PromoteRequest))
    async def promote(self, request: Request, tenant: str = TenantPath, adapter: str = AdapterPath) -> ActiveVersion:
        body = await parse(PromoteRequest, request)
        version = await self.engine.promote(tenant, adapter, body.version)
        return ActiveVersion(tenant=tenant, adapter=adapter, active_version=version)

    @app.post("/v1/tenants/{tenant}/adapters/{adapter}/rollback", response_model=ActiveVersion, responses=ERRORS)
    async def rollback(self, tenant: str = TenantPath, adapter: str = AdapterPath) -> ActiveVersion:
        version = await self.engine.rollback(tenant, adapter)
        return ActiveVersion(tenant=tenant, adapter=adapter, active_version=version)

    @app.delete("/v1/tenants/{tenant}/adapters/{adapter}", response_model=Deleted, responses=ERRORS)
    async def delete_adapter(self, tenant: str = TenantPath, adapter: str = AdapterPath) -> Deleted:
        await self.engine.delete_adapter(tenant, adapter)
        return Deleted(tenant=tenant, adapter=adapter, deleted=True)


FINETUNE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": FinetuneRequest.model_json_schema(ref_template="#/components/schemas/{model}")},
            "multipart/form-data": {"schema": {
                "type": "object",
                "required": ["tenant", "file"],
                "properties": {
                    "tenant": {"type": "string", "pattern": NAME_PATTERN},
                    "adapter": {"type": "string", "pattern": NAME_PATTERN},
                    "backbone": {"type": "string"},
                    "params": {"type": "string", "description": "FinetuneParams as JSON"},
                    "file": {"type": "string", "format": "binary",
                             "description": "JSONL lines {\"text\", \"label\"}, or CSV with columns text,label"},
                },
            }},
        },
    }
}


def _job_response(job: Any, status: int = 200) -> Response:
    return _json(job.public(), status)


@app.post("/v1/finetune", status_code=202, response_model=JobStatus, openapi_extra=FINETUNE_BODY,
          responses={**ERRORS, 429: {"model": ErrorResponse}})
async def finetune(request: Request) -> Response:
    """Queue a fine-tune job: a head trained on the frozen backbone, evaluated, promoted if better."""
    body = await finetune_request(request)
    engine: Engine = bentoml.get_current_service().engine
    params = (body.params or FinetuneParams()).model_dump()
    job = await engine.finetune(body.tenant, body.adapter, body.backbone, body.examples, params)
    return _job_response(job, 202)


@app.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
async def get_job(job_id: str) -> Response:
    return _job_response(await bentoml.get_current_service().engine.job(job_id))


@app.get("/v1/jobs/{job_id}/events", response_model=JobEvents, responses=ERRORS)
async def job_events(job_id: str) -> Response:
    events = await bentoml.get_current_service().engine.job_events(job_id)
    return _json({"job_id": job_id, "events": events})


@app.post("/v1/jobs/{job_id}/cancel", response_model=JobStatus, responses=ERRORS)
async def cancel_job(job_id: str) -> Response:
    return _job_response(await bentoml.get_current_service().engine.cancel_job(job_id))


@app.get("/v1/tenants/{tenant}/jobs", response_model=JobList, responses=ERRORS)
async def list_jobs(tenant: str = TenantPath) -> Response:
    jobs = await bentoml.get_current_service().engine.list_jobs(tenant)
    return _json({"tenant": tenant, "jobs": [j.public() for j in jobs]})


Graft.add_asgi_middleware(ReadyzMiddleware)
