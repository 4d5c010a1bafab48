"""The BentoML service: a thin shell around the Engine, HTTP routes and the gRPC server.

Routes live in a FastAPI app (service/http.py) mounted into the service, so the contract
(paths, JSON error bodies, 400 rather than 422, /metrics) is ours while BentoML runs the
server, the worker processes and /livez. Two `@bentoml.api` methods, `embed` and `predict`
(POST /embed, /predict), serve BentoML's own clients with the same glue and contract as
/v1/embed and /v1/predict (service/bento_api.py). Heavy work (backbone export and loading) starts
after the server is up, never at import, so /livez answers at once and /readyz later.
"""
from __future__ import annotations

import logging
from typing import Annotated, Literal

import bentoml
from pydantic import Field
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service import bento_api
from service.auth import check_secret
from service.engine import Engine
from service.grpc_server import GrpcServer
from service.http import app, embed_answer, predict_answer
from service.schemas import EmbedResponse, ImageItem, Name, PredictResponse
from service.settings import get_settings
from service.worker_pool import WorkerPool

settings = get_settings()
# Refuse a guessable secret before BentoML starts any worker (the process exits).
for _value, _setting in ((settings.admin_key, "GRAFT_ADMIN_KEY"), (settings.signing_key, "GRAFT_SIGNING_KEY")):
    if _value:
        check_secret(_value, _setting)
if settings.prepared == "required":
    # Serving from prepared artifacts (no torch, no transformers): a backbone that was not
    # prepared, or prepared for other weights, runtime or split settings, stops the process
    # here with what is missing and the command that builds it, instead of exporting.
    from models.loader import check_prepared

    check_prepared(settings.backbones, settings.artifacts_home, split_layers=settings.split_layers,
                   image_split_blocks=settings.image_split_blocks)


def _route_logs_through_bentoml() -> None:
    """Our INFO logs (provider and precision in use, artifact builds) in BentoML's format."""
    handlers = logging.getLogger("bentoml").handlers
    for name in ("graft", "models", "service", "adapters"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.INFO)
        if handlers and not logger.handlers:
            for handler in handlers:
                logger.addHandler(handler)
            logger.propagate = False


class ReadyzMiddleware:
    """Answers /readyz with the Engine's state (provider, precision, registry) instead of
    BentoML's empty body: 200 when ready or degraded (serving resident adapters while the
    registry is away), 503 while loading or after a failure."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/readyz":
            try:
                engine: Engine = bentoml.get_current_service().engine
                status = engine.status()
            except Exception:  # the service instance is not created yet
                status = {"status": "starting", "backbones": []}
            code = 200 if status["status"] in ("ready", "degraded") else 503
            await JSONResponse(status, code)(scope, receive, send)
            return
        await self.app(scope, receive, send)


# BentoML's own request metrics label series with the raw path (tenant names, job ids on an
# open endpoint, unbounded series): they are switched off through BentoML's configuration,
# and service/http.py serves /metrics itself, with request metrics by route template.
# BentoML's OpenTelemetry middleware made spans for every request even at its default
# sample rate of 0 (nothing recorded), about a third of the event loop's work for a lone
# text (docs/BENCHMARKS.md): it skips every path unless a BentoML configuration file
# (BENTOML_CONFIG) sets `tracing` with a sample rate, an exporter and its own excluded_urls.
@bentoml.service(
    name="graft",
    metrics={"enabled": False},
    tracing={"excluded_urls": [".*"]},
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

    # BentoML's clients (SyncHTTPClient, AsyncHTTPClient) list these in /schema.json and call
    # them by name, with these typed parameters. The body is checked against /v1's own
    # schemas first; auth (token= sends `Authorization: Bearer`), rate limits, answers and
    # errors are /v1/embed's and /v1/predict's: service/bento_api.py. (Items are typed
    # `str | ImageItem`, not schemas.Item: BentoML 1.4 applies the metadata of an Annotated
    # type inside a list twice, which pydantic refuses for Item's callable discriminator.)
    @bentoml.api(route=bento_api.EMBED_ROUTE, output_spec=EmbedResponse)
    async def embed(self, ctx: bentoml.Context, inputs: list[str | ImageItem], backbone: str | None = None,
                    input_type: Literal["query", "passage"] = "query") -> Response:
        """Embed texts or images ({"image": base64}) with a frozen backbone; rows are
        L2-normalised. Any valid key. The same as POST /v1/embed."""
        return await bento_api.answer(ctx, embed_answer, inputs, backbone, input_type)

    @bentoml.api(route=bento_api.PREDICT_ROUTE, output_spec=PredictResponse)
    async def predict(self, ctx: bentoml.Context, tenant: Name, inputs: list[str | ImageItem],
                      adapter: Name = "default", top_k: Annotated[int, Field(ge=1, le=100)] = 1) -> Response:
        """Classify items with a tenant's adapter (its active version) on the shared
        backbone. The tenant's key or the admin key. The same as POST /v1/predict."""
        return await bento_api.answer(ctx, predict_answer, tenant, adapter, inputs, top_k)


Graft.add_asgi_middleware(ReadyzMiddleware)
Graft.add_asgi_middleware(bento_api.Gate)
