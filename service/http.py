"""HTTP routes (FastAPI) of the contract in the README and docs/ARCHITECTURE.md.

Mounted into the BentoML service by service/api.py. Each route: authenticate, authorise
the tenant, validate with the pydantic schemas, call the Engine. Errors are mapped once
(service/errors.py) and always come back as JSON `{"error": {...}}`.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Path, Request
from fastapi.routing import APIRoute
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service import cards, metrics
from service.auth import Principal
from service.compat import Observed, caller, engine, json_response, read_limited, with_error_headers
from service.errors import (
    DOMAIN_ERRORS, GraftError, InvalidInput, MethodNotAllowed, NotFound, from_validation, translate,
)
from service.schemas import (
    KEY_ID_PATTERN, NAME_PATTERN, ActiveVersion, AdapterList, AdapterSummary, CreateAdapterRequest, CreatedAdapter, Deleted,
    EmbedRequest, EmbedResponse, ErrorResponse, IssueKeyRequest, FinetuneParams, FinetuneRequest, JobEvents, JobList, JobStatus,
    KeyCreated, KeyList, PredictRequest, PredictResponse, PromoteRequest, TenantCreated, TenantDeleted, TenantRequest,
    VersionDetail, VersionList,
)
from service.settings import get_settings
from service.items import raw_items
from service.uploads import parse_csv, parse_jsonl, parse_zip

settings = get_settings()
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 409, 413, 429, 503)
}

app = FastAPI(
    title="Graft",
    version="1",
    description="Frozen pretrained backbones with per-tenant adapters, served on ONNX Runtime. "
                "Send `Authorization: Bearer <key>` (a tenant's key or the admin key).",
)



def _openapi() -> dict[str, Any]:
    """FastAPI's description, with the `$defs` of the bodies that routes read themselves
    (json_body, openapi_extra: here and in the compatibility routers) moved to the
    components, where their `$ref`s point; left inside, the refs did not resolve and
    schemathesis could not generate those bodies (tests/integration/test_fuzz.py)."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for item in schema["paths"].values():
            for operation in item.values():
                for media in operation.get("requestBody", {}).get("content", {}).values():
                    components.update(media.get("schema", {}).pop("$defs", {}))
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = _openapi  # type: ignore[method-assign]

TenantPath = Path(pattern=NAME_PATTERN, description="tenant id")
AdapterPath = Path(pattern=NAME_PATTERN, description="adapter name")


@app.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    """Prometheus metrics (open, like /livez): request metrics by route template only, so no
    tenant name or job id becomes a label; fine-tune jobs by status read at scrape time."""
    body, content_type = await asyncio.to_thread(metrics.exposition)
    try:
        body += metrics.jobs_by_status(await asyncio.to_thread(engine().jobs.counts)).encode()
    except Exception:  # the registry is away (or the service not created yet): the rest answers
        pass
    return Response(body, media_type=content_type)


def _error(err: GraftError) -> Response:
    return with_error_headers(json_response(err.to_dict(), err.status), err)


class RouteMetrics:
    """Request count and latency by route template (/v1/jobs/{job_id}), never by raw path.

    A plain ASGI middleware: Starlette's `@app.middleware("http")` (BaseHTTPMiddleware) runs
    every request in an extra task and wraps its body stream, which cost about a
    millisecond per request here (docs/BENCHMARKS.md, the latency breakdown)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        observed = Observed(scope, send)
        try:
            await self.app(scope, receive, observed.send)
        finally:
            observed.done(getattr(scope.get("route"), "path", "unmatched"))


app.add_middleware(RouteMetrics)


@app.exception_handler(GraftError)
async def _graft_error(_: Request, err: GraftError) -> Response:
    return _error(err)


for _kind in DOMAIN_ERRORS:
    app.add_exception_handler(_kind, lambda _req, err: _error(translate(err)))  # type: ignore[arg-type]


@app.exception_handler(RequestValidationError)
async def _validation_error(_: Request, err: RequestValidationError) -> Response:
    return _error(from_validation(list(err.errors())))


M = TypeVar("M", bound=BaseModel)


async def parse(model: type[M], request: Request, *, optional: bool = False) -> M:
    """The JSON body as `model`, whatever the Content-Type says (curl -d sends a form type);
    `optional`: no body at all means the model's defaults."""
    started = time.perf_counter()
    body = await read_limited(request, int(settings.max_body_mb * 1024 * 1024))
    if optional and not body.strip():
        return model()
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as e:
        raise from_validation(list(e.errors(include_url=False))) from e
    metrics.observe_stage("parse", time.perf_counter() - started)
    return parsed


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI description of a body that `parse` reads."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


# -- inference -------------------------------------------------------------------------


@app.post("/v1/embed", response_model=EmbedResponse, responses=ERRORS, openapi_extra=json_body(EmbedRequest))
async def embed(request: Request, who: Principal = Depends(caller)) -> Response:
    """Embed texts or images with a frozen backbone; rows are L2-normalised. Any valid key."""
    body = await parse(EmbedRequest, request)
    return json_response(await embed_answer(who, body.inputs, body.backbone, body.input_type))


async def embed_answer(who: Principal, inputs: list[Any], backbone: str | None,
                       input_type: str = "query") -> dict[str, Any]:
    """/v1/embed's answer, after its body is validated (the BentoML endpoint's too: service/bento_api.py)."""
    await engine().admit(who, len(inputs))
    out = await engine().inference.embed(raw_items(inputs), backbone, input_type)
    return {
        "backbone": out.backbone.id, "dim": out.backbone.dim, "embeddings": out.vectors,
        "truncated": [i for i, t in enumerate(out.truncated) if t],
    }


@app.post("/v1/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=json_body(PredictRequest))
async def predict(request: Request, who: Principal = Depends(caller)) -> Response:
    """Classify items with a tenant's adapter (its active version) on the shared backbone."""
    body = await parse(PredictRequest, request)
    return json_response(await predict_answer(who, body.tenant, body.adapter, body.inputs, body.top_k))


async def predict_answer(who: Principal, tenant: str, adapter: str, inputs: list[Any], top_k: int) -> dict[str, Any]:
    """/v1/predict's answer, after its body is validated (the BentoML endpoint's too: service/bento_api.py)."""
    who.authorize(tenant)
    await engine().admit(who, len(inputs))
    out = await engine().inference.predict(tenant, adapter, raw_items(inputs), top_k)
    return {"tenant": out.tenant, "adapter": out.adapter, "version": out.version,
            "backbone": out.backbone, "predictions": out.predictions}


# -- tenants and keys (admin) -------------------------------------------------------------


@app.post("/v1/tenants", status_code=201, response_model=TenantCreated, responses=ERRORS,
          openapi_extra=json_body(TenantRequest))
async def create_tenant(request: Request, who: Principal = Depends(caller)) -> Response:
    """Admin: a tenant and its first API key (shown once)."""
    who.require_admin()
    body = await parse(TenantRequest, request)
    key = await engine().tenancy.create_tenant(body.tenant)
    return json_response({"tenant": body.tenant, "api_key": key}, 201)


@app.delete("/v1/tenants/{tenant}", response_model=TenantDeleted, responses=ERRORS)
async def delete_tenant(tenant: str = TenantPath, who: Principal = Depends(caller)) -> Response:
    """Admin: erase the tenant and everything Graft holds for it (keys, adapters, versions,
    jobs, their examples and events, cached vectors); says how many of each went."""
    who.require_admin()
    removed = await engine().tenancy.delete_tenant(tenant)
    await engine().inference.cache.refresh()  # this replica stops serving it at once; others within a poll
    return json_response({"tenant": tenant, "removed": removed})


@app.post("/v1/tenants/{tenant}/keys", status_code=201, response_model=KeyCreated, responses=ERRORS,
          openapi_extra=json_body(IssueKeyRequest))
async def issue_key(request: Request, tenant: str = TenantPath, who: Principal = Depends(caller)) -> Response:
    """Admin: another key for the tenant (rotation: issue, switch clients, revoke the old),
    optionally expiring (`{"expires_in_s": 86400}`; no body: valid until revoked)."""
    who.require_admin()
    body = await parse(IssueKeyRequest, request, optional=True)
    info, key = await engine().tenancy.issue_key(tenant, body.expires_in_s)
    return json_response({"tenant": tenant, "key_id": info.key_id, "api_key": key, "expires_at": info.expires_at}, 201)


@app.get("/v1/tenants/{tenant}/keys", response_model=KeyList, responses=ERRORS)
async def list_keys(tenant: str = TenantPath, who: Principal = Depends(caller)) -> Response:
    who.require_admin()
    keys = await engine().tenancy.list_keys(tenant)
    return json_response({"tenant": tenant, "keys": [
        {"key_id": k.key_id, "created_at": k.created_at, "revoked": k.revoked, "expires_at": k.expires_at}
        for k in keys]})


@app.delete("/v1/tenants/{tenant}/keys/{key_id}", response_model=KeyList, responses=ERRORS)
async def revoke_key(tenant: str = TenantPath, key_id: str = Path(pattern=KEY_ID_PATTERN),
                     who: Principal = Depends(caller)) -> Response:
    """Admin: revoke a key (every replica refuses it within GRAFT_KEY_CACHE_S)."""
    who.require_admin()
    await engine().tenancy.revoke_key(tenant, key_id)
    return await list_keys(tenant, who)


# -- adapters ------------------------------------------------------------------------------


@app.post("/v1/adapters", status_code=201, response_model=CreatedAdapter, responses=ERRORS,
          openapi_extra=json_body(CreateAdapterRequest))
async def create_adapter(request: Request, who: Principal = Depends(caller)) -> Response:
    """A zero-shot adapter from label names: version 1, serving at once."""
    body = await parse(CreateAdapterRequest, request)
    who.authorize(body.tenant)
    version = await engine().versions.create_zero_shot(body.tenant, body.adapter, body.labels, body.descriptions, body.backbone)
    return json_response({"tenant": body.tenant, "adapter": body.adapter, "version": version,
                  "backbone": body.backbone or settings.default_backbone, "labels": body.labels}, 201)


@app.get("/v1/tenants/{tenant}/adapters", response_model=AdapterList, responses=ERRORS)
async def list_adapters(tenant: str = TenantPath, who: Principal = Depends(caller)) -> AdapterList:
    who.authorize(tenant)
    infos = await engine().versions.list_adapters(tenant)
    return AdapterList(tenant=tenant, adapters=[
        AdapterSummary(adapter=i.adapter, backbone=i.backbone, active_version=i.active_version, versions=i.versions)
        for i in infos
    ])


@app.get("/v1/tenants/{tenant}/adapters/{adapter}/versions", response_model=VersionList, responses=ERRORS)
async def list_versions(tenant: str = TenantPath, adapter: str = AdapterPath,
                        who: Principal = Depends(caller)) -> VersionList:
    who.authorize(tenant)
    versions = await engine().versions.list_versions(tenant, adapter)
    return VersionList(tenant=tenant, adapter=adapter, versions=[
        VersionDetail(
            version=v.version, active=v.active, created_at=v.created_at, backbone=v.config.backbone,
            head=v.config.head, method=v.config.method, lora=v.config.lora, unfreeze=v.config.unfreeze,
            lexical=v.config.lexical, bytes=v.bytes,
            labels=v.config.labels, metrics=v.config.metrics,
            training=v.config.training, parent_version=v.config.parent_version,
        )
        for v in versions
    ])


@app.post("/v1/tenants/{tenant}/adapters/{adapter}/promote", response_model=ActiveVersion, responses=ERRORS,
          openapi_extra=json_body(PromoteRequest))
async def promote(request: Request, tenant: str = TenantPath, adapter: str = AdapterPath,
                  who: Principal = Depends(caller)) -> ActiveVersion:
    """Make a version active. One that drops labels the active version serves needs
    `allow_dropped_labels: true` (else 409 naming them)."""
    who.authorize(tenant)
    body = await parse(PromoteRequest, request)
    version = await engine().versions.promote(tenant, adapter, body.version,
                                              allow_dropped_labels=body.allow_dropped_labels)
    return ActiveVersion(tenant=tenant, adapter=adapter, active_version=version)


VersionPath = Path(ge=1, le=2**31 - 1, description="version number")
CARD_RESPONSES: dict[int | str, dict[str, Any]] = {**ERRORS, 200: {"content": {
    "application/json": {"schema": {"type": "object"}},
    "text/markdown": {"schema": {"type": "string"}}}}}


@app.get("/v1/tenants/{tenant}/adapters/{adapter}/versions/{version}/card", responses=CARD_RESPONSES)
async def version_card(request: Request, tenant: str = TenantPath, adapter: str = AdapterPath,
                       version: int = VersionPath, who: Principal = Depends(caller)) -> Response:
    """The version's model card: JSON; Markdown (its figures embedded) with `Accept: text/markdown`."""
    who.authorize(tenant)
    card = await engine().versions.card(tenant, adapter, version)
    if "text/markdown" in request.headers.get("accept", ""):
        text = await asyncio.to_thread(lambda: cards.markdown(card, cards.png(card)))
        return Response(text, media_type="text/markdown; charset=utf-8")
    return json_response(card)


@app.get("/v1/tenants/{tenant}/adapters/{adapter}/versions/{version}/card.png", responses={
    **ERRORS, 200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}})
async def version_card_png(tenant: str = TenantPath, adapter: str = AdapterPath, version: int = VersionPath,
                           who: Principal = Depends(caller)) -> Response:
    """The card's figures: the validation confusion matrix as a heatmap, the train/validation curves."""
    who.authorize(tenant)
    card = await engine().versions.card(tenant, adapter, version)
    return Response(await asyncio.to_thread(cards.png, card), media_type="image/png")


@app.post("/v1/tenants/{tenant}/adapters/{adapter}/rollback", response_model=ActiveVersion, responses=ERRORS)
async def rollback(tenant: str = TenantPath, adapter: str = AdapterPath,
                   who: Principal = Depends(caller)) -> ActiveVersion:
    who.authorize(tenant)
    version = await engine().versions.rollback(tenant, adapter)
    return ActiveVersion(tenant=tenant, adapter=adapter, active_version=version)


@app.delete("/v1/tenants/{tenant}/adapters/{adapter}", response_model=Deleted, responses=ERRORS)
async def delete_adapter(tenant: str = TenantPath, adapter: str = AdapterPath,
                         who: Principal = Depends(caller)) -> Deleted:
    who.authorize(tenant)
    await engine().versions.delete_adapter(tenant, adapter)
    return Deleted(tenant=tenant, adapter=adapter, deleted=True)


# -- fine-tuning ---------------------------------------------------------------------------


async def finetune_request(request: Request) -> FinetuneRequest:
    """Inline JSON, or multipart with form fields and a JSONL, CSV or zip `file`."""
    body = await read_limited(request, int(settings.max_upload_mb * 1024 * 1024), "GRAFT_MAX_UPLOAD_MB")
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            return FinetuneRequest.model_validate_json(body)
        except ValidationError as e:
            raise from_validation(list(e.errors(include_url=False))) from e
    form = await request.form()
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise InvalidInput("a multipart fine-tune request needs a file field `file` (JSONL, CSV or zip)")
    data = await upload.read()
    name, content_type = (upload.filename or "").lower(), upload.content_type or ""
    if name.endswith(".zip") or "zip" in content_type or data[:4] == b"PK\x03\x04":
        examples = parse_zip(data, max_bytes=int(settings.max_upload_mb * 1024 * 1024))
    elif name.endswith(".csv") or "csv" in content_type:
        examples = parse_csv(data)
    else:
        examples = parse_jsonl(data)
    fields: dict[str, Any] = {k: v for k, v in form.items() if k != "file" and isinstance(v, str)}
    try:
        if "params" in fields:
            fields["params"] = FinetuneParams.model_validate_json(fields["params"])
        return FinetuneRequest.model_validate({**fields, "examples": examples}, strict=False)
    except ValidationError as e:
        raise from_validation(list(e.errors(include_url=False))) from e


FINETUNE_BODY = {"requestBody": {"required": True, "content": {
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
                     "description": 'JSONL lines {"text", "label"} or {"image": base64, "label"}; CSV with the '
                                    "columns text,label; or a zip of PNG/JPEG images in one folder per label"},
        },
    }},
}}}


@app.post("/v1/finetune", status_code=202, response_model=JobStatus, openapi_extra=FINETUNE_BODY, responses=ERRORS)
async def finetune(request: Request, who: Principal = Depends(caller)) -> Response:
    """Queue a fine-tune job: a head trained on the frozen backbone, evaluated, promoted if better."""
    body = await finetune_request(request)
    who.authorize(body.tenant)
    params = (body.params or FinetuneParams()).model_dump()
    job = await engine().jobs.submit(body.tenant, body.adapter, body.backbone, body.examples, params)
    return json_response(job.public(), 202)


@app.get("/v1/jobs/{job_id}", response_model=JobStatus, responses=ERRORS)
async def get_job(job_id: str, who: Principal = Depends(caller)) -> Response:
    return json_response((await engine().jobs.get(job_id, who.tenant)).public())


@app.get("/v1/jobs/{job_id}/events", response_model=JobEvents, responses=ERRORS)
async def job_events(job_id: str, who: Principal = Depends(caller)) -> Response:
    return json_response({"job_id": job_id, "events": await engine().jobs.events(job_id, who.tenant)})


@app.post("/v1/jobs/{job_id}/cancel", response_model=JobStatus, responses=ERRORS)
async def cancel_job(job_id: str, who: Principal = Depends(caller)) -> Response:
    return json_response((await engine().jobs.cancel(job_id, who.tenant)).public())


@app.get("/v1/tenants/{tenant}/jobs", response_model=JobList, responses=ERRORS)
async def list_jobs(tenant: str = TenantPath, who: Principal = Depends(caller)) -> Response:
    who.authorize(tenant)
    jobs = await engine().jobs.for_tenant(tenant)
    return json_response({"tenant": tenant, "jobs": [j.public() for j in jobs]})


# Compatibility surfaces, each a thin router with its protocol's own error shape:
# OpenAI's /v1/embeddings and /v1/models, the Open Inference Protocol v2 (/v2/...).
from service import oip, openai_api  # noqa: E402

app.include_router(openai_api.router)
app.include_router(oip.router)


# Last: whatever no route above took. Unknown paths and wrong methods answer in the JSON
# error shape of every other error (BentoML's router would answer plain text).
@app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"], include_in_schema=False)
async def no_route(request: Request, path: str) -> Response:
    allowed = sorted({m for r in app.routes if isinstance(r, APIRoute) and r.path != "/{path:path}"
                      and r.path_regex.match(request.url.path) for m in r.methods or ()})
    if allowed:
        err: GraftError = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}; use {allowed}",
                                           {"allow": allowed})
        response = _error(err)
        response.headers["Allow"] = ", ".join(allowed)
        return response
    return _error(NotFound(f"no route {request.url.path}: see the README for the API"))
