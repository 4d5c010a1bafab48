"""What the HTTP routers share: service/http.py (Graft's own API), service/openai_api.py
(OpenAI's embeddings API), service/oip.py (the Open Inference Protocol v2) and
service/bento_api.py (BentoML's clients): the Engine, who is calling, a bounded body, JSON
answers (timed: the `serialise` stage), and, for the compatibility routers, one wrapper that
renders every error in the router's own protocol shape instead of Graft's
`{"error": {"code", "message"}}`.

They are transports only: authenticate with engine.tenancy, admit, call engine.inference /
engine.versions, map service/errors.py errors. No ML, no tenancy.
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Awaitable, Callable

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import Message, Scope, Send

from service import metrics
from service.auth import Principal
from service.engine import Engine
from service.errors import DOMAIN_ERRORS, GraftError, MethodNotAllowed, PayloadTooLarge, translate
from service.settings import get_settings

log = logging.getLogger(__name__)


def engine() -> Engine:
    import bentoml

    return bentoml.get_current_service().engine


async def caller(request: Request) -> Principal:
    """The caller from `Authorization: Bearer <key>`: a tenant's key or the admin key."""
    client = request.client.host if request.client else None
    return await engine().tenancy.authenticate(request.headers.get("authorization"), client)


async def read_limited(request: Request, limit: int, setting: str = "GRAFT_MAX_BODY_MB") -> bytes:
    """The body, or 413 as soon as it passes `limit` bytes (whatever Content-Length claims)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body has {declared} bytes; the limit is {limit} ({setting})")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body passes the limit of {limit} bytes ({setting})")
        chunks.append(chunk)
    body = b"".join(chunks)
    request._body = body  # Starlette's form parser reads the cached body from here
    return body


async def read_body(request: Request) -> bytes:
    """The body within GRAFT_MAX_BODY_MB, or 413."""
    return await read_limited(request, int(get_settings().max_body_mb * 1024 * 1024))


def json_response(body: Any, status: int = 200) -> Response:
    started = time.perf_counter()
    response = Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status, media_type="application/json")
    metrics.observe_stage("serialise", time.perf_counter() - started)
    return response


class Observed:
    """One HTTP request's `send`, noting the status it sends; `done(route)` counts the request
    by route (a template, never a raw path) with that status (500 if it failed before it
    answered) and its duration. For plain ASGI middleware (no BaseHTTPMiddleware task)."""

    def __init__(self, scope: Scope, send: Send) -> None:
        self.method, self._send = scope["method"], send
        self.status, self.started = 500, time.perf_counter()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)

    def done(self, route: str) -> None:
        metrics.observe_http(route, self.method, self.status, time.perf_counter() - self.started)


def with_error_headers(response: Response, err: GraftError) -> Response:
    """Retry-After and the like from the error; WWW-Authenticate on a 401."""
    response.headers.update(err.headers)
    if err.status == 401:
        response.headers["WWW-Authenticate"] = "Bearer"
    return response


Route = Callable[..., Awaitable[Response]]


def speaking(render: Callable[[GraftError], Response]) -> Callable[[Route], Route]:
    """A route decorator: whatever the route raises (Graft's errors, the domain errors that
    service/errors.py maps, anything unforeseen as a 500) comes back rendered by `render`,
    in the protocol's own error shape. FastAPI still sees the route's own signature."""

    def decorate(route: Route) -> Route:
        @functools.wraps(route)
        async def guarded(*args: Any, **kwargs: Any) -> Response:
            try:
                return await route(*args, **kwargs)
            except GraftError as err:
                return render(err)
            except DOMAIN_ERRORS as exc:
                return render(translate(exc))
            except Exception:
                log.exception("unhandled error in %s", route.__name__)
                return render(GraftError("internal error; see the server log"))

        return guarded

    return decorate


def answer_wrong_methods(router: APIRouter, render: Callable[[GraftError], Response]) -> None:
    """405 with `Allow`, in the router's error shape, for a known path called with another
    method (service/http.py's catch-all sees only the app's own routes, not included ones).
    Call it once, after the router's last route."""
    paths: dict[str, set[str]] = {}
    for route in router.routes:
        if isinstance(route, APIRoute):
            paths.setdefault(route.path, set()).update(route.methods or ())
    for path, methods in paths.items():
        allowed = sorted(methods - {"HEAD"})
        others = sorted({"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} - methods)
        router.add_api_route(path, _refuse(allowed, render), methods=others, include_in_schema=False)


def _refuse(allowed: list[str], render: Callable[[GraftError], Response]) -> Route:
    async def wrong_method(request: Request) -> Response:
        return render(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}; use {allowed}",
                                       {"allow": allowed}, headers={"Allow": ", ".join(allowed)}))

    return wrong_method
