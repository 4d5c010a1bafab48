"""The BentoML service: a thin shell around the Engine, HTTP routes and the gRPC server.

Routes live in a FastAPI app (service/http.py) mounted into the service, so the contract
(paths, JSON error bodies, 400 rather than 422, /metrics) is ours while BentoML runs the
server, the worker processes and /livez. Heavy work (backbone export and loading) starts
after the server is up, never at import, so /livez answers at once and /readyz later.
"""
from __future__ import annotations

import logging

import bentoml
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.auth import check_secret
from service.engine import Engine
from service.grpc_server import GrpcServer
from service.http import app
from service.settings import get_settings
from service.worker_pool import WorkerPool

settings = get_settings()
# Refuse a guessable secret before BentoML starts any worker (the process exits).
for _value, _setting in ((settings.admin_key, "GRAFT_ADMIN_KEY"), (settings.signing_key, "GRAFT_SIGNING_KEY")):
    if _value:
        check_secret(_value, _setting)


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
@bentoml.service(
    name="graft",
    metrics={"enabled": False},
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

Graft.add_asgi_middleware(ReadyzMiddleware)
