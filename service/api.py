"""The BentoML service: a thin shell around the Engine, HTTP routes and the gRPC server.

Routes live in a FastAPI app (service/http.py) mounted into the service, so the contract
(paths, JSON error bodies, 400 rather than 422) is ours while BentoML runs the server, the
worker processes, /livez and /metrics. Heavy work (backbone export and loading) starts
after the server is up, never at import, so /livez answers at once and /readyz later.
"""
from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

import bentoml
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service import metrics
from service.auth import check_admin_key
from service.engine import Engine
from service.grpc_server import GrpcServer
from service.http import app
from service.settings import get_settings
from service.worker_pool import WorkerPool

settings = get_settings()
if settings.admin_key:  # refuse a guessable key before BentoML starts any worker (it exits)
    check_admin_key(settings.admin_key, "GRAFT_ADMIN_KEY")


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

    async def __metrics__(self, content: str) -> str:
        """BentoML's and our metrics, plus the registry's jobs by status."""
        try:
            counts = await asyncio.to_thread(self.engine.jobs.counts)
        except Exception:  # the registry is away: the rest of /metrics still answers
            return content
        return content + metrics.jobs_by_status(counts)


Graft.add_asgi_middleware(ReadyzMiddleware)

# BentoML's outermost middleware labels its request metrics with the raw path, so tenant
# names and job ids would reach the open /metrics and grow its series without bound. That
# middleware is handed the path's template instead (its only use of the path), and the
# real path comes back just inside BentoML's stack, before routing. tests/integration/
# test_security.py checks that /metrics names no tenant.
_ID_SEGMENTS = re.compile(
    r"^/v1/(?:tenants/(?P<t>[^/]+)(?:/adapters/(?P<a>[^/]+)|/keys/(?P<k>[^/]+))?|jobs/(?P<j>[^/]+))"
)
_TEMPLATES = {"t": "{tenant}", "a": "{adapter}", "k": "{key_id}", "j": "{job_id}"}


def template_path(path: str) -> str:
    match = _ID_SEGMENTS.match(path)
    if not match:
        return path
    out, last = [], 0
    for name, value in match.groupdict().items():
        if value is not None:
            out += [path[last : match.start(name)], _TEMPLATES[name]]
            last = match.end(name)
    return "".join(out) + path[last:]


def _metrics_see_templates() -> None:
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware as M

    if getattr(M, "_graft_templated", False):
        return
    original = M.__call__

    async def call(self: Any, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            templated = template_path(scope["path"])
            if templated != scope["path"]:
                scope = {**scope, "path": templated, "graft.path": scope["path"]}
        await original(self, scope, receive, send)

    M.__call__ = call  # type: ignore[method-assign]
    M._graft_templated = True  # type: ignore[attr-defined]


class _RealPath:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if "graft.path" in scope:
            scope = {**scope, "path": scope.pop("graft.path")}
        await self.app(scope, receive, send)


_metrics_see_templates()
Graft.add_asgi_middleware(_RealPath)
