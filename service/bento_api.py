"""BentoML's own clients on Graft: `bentoml.SyncHTTPClient(url, token=key)` and
`bentoml.AsyncHTTPClient` list (GET /schema.json) and call `embed` and `predict`, the
`@bentoml.api` methods of the Graft service (service/api.py) at POST /embed and /predict.
BentoML puts its API routes before the mounted HTTP app, so the app's catch-all never sees
them; every other path (/v1/..., unknown ones) still goes to the app, unchanged.

The contract is /v1/embed's and /v1/predict's, through the same code:

- `Gate`, an ASGI middleware that runs before BentoML reads the body: who is calling
  (service/http.py `caller`: engine.tenancy.authenticate), then the body within
  GRAFT_MAX_BODY_MB and checked against the route's schema (`parse`), in the HTTP routes'
  order and with their messages; request metrics by route (/embed, /predict).
- The methods call `embed_answer` / `predict_answer` (service/http.py), the glue the HTTP
  routes call: authorize, admit (engine.tenancy), engine.inference.embed / predict. The body
  is the one /v1 answers, byte for byte.
- Errors, met in the Gate or in a method (`answer`), are mapped one way: every GraftError
  (and domain error, service/errors.py `translate`) comes back as the HTTP routes render it
  (`_error`: `{"error": {"code", "message"}}`, its status, Retry-After, WWW-Authenticate).
  Not as a BentoMLException: BentoML 1.4's
  server answers one of status 401 or 403 with "Authorization error", a 5xx with a generic
  message and any other 4xx as `[{"error": message}]`, so Graft's message would be lost.
  BentoML's client raises on the status alone (`map_exception`): the class
  `BentoMLException.error_mapping` names for it (InvalidArgument 400, NotFound 404,
  ServiceUnavailable 503, BentoMLException for 401, 409, 413, 429), `error_code` the status,
  and the message Graft's JSON body.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable

import bentoml
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.auth import Principal
from service.errors import DOMAIN_ERRORS, GraftError, MethodNotAllowed, translate
from service.compat import Observed, caller, json_response
from service.http import _error, parse
from service.schemas import EmbedRequest, PredictRequest

EMBED_ROUTE, PREDICT_ROUTE = "/embed", "/predict"
# Each BentoML endpoint's path and the schema its body must meet: /v1's own, strict (the
# methods' typed parameters describe the same fields to BentoML's clients).
BODIES: dict[str, type[BaseModel]] = {EMBED_ROUTE: EmbedRequest, PREDICT_ROUTE: PredictRequest}
PRINCIPAL = "graft.principal"  # the scope key where the Gate leaves who is calling

MAPPED = (GraftError, *DOMAIN_ERRORS)  # errors with a client-facing mapping (service/errors.py)


class Gate:
    """Authentication, the body limit and validation of the BentoML endpoints, before
    BentoML parses anything, answered as the HTTP routes answer them; then the request goes
    on with its body replayed, as JSON, and the caller in the scope. Other paths pass untouched."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        model = BODIES.get(scope["path"]) if scope["type"] == "http" else None
        if model is None:
            await self.app(scope, receive, send)
            return
        observed = Observed(scope, send)
        try:
            try:
                if scope["method"] != "POST":
                    raise MethodNotAllowed(f"{scope['method']} is not allowed on {scope['path']}; use ['POST']",
                                           {"allow": ["POST"]}, headers={"Allow": "POST"})
                request = Request(scope, receive)
                who = await caller(request)
                await parse(model, request)
                body = await request.body()  # read once by parse, within GRAFT_MAX_BODY_MB
            except MAPPED as exc:
                await _error(translate(exc))(scope, receive, observed.send)
                return
            # The body was read as JSON whatever Content-Type said (as /v1 reads it: curl -d
            # sends a form type); BentoML picks its parser by that header, so it says JSON now.
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            inner = {**scope, "headers": [*headers, (b"content-type", b"application/json")], PRINCIPAL: who}
            await self.app(inner, _replay(body, receive), observed.send)
        finally:
            observed.done(scope["path"])


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over the body already read, then the client's own messages
    (a disconnect)."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def answer(ctx: bentoml.Context, handler: Callable[..., Awaitable[dict[str, Any]]], *args: Any) -> Response:
    """`handler(who, *args)`'s body as the HTTP route answers it, or its error, mapped once."""
    try:
        who: Principal | None = ctx.request.scope.get(PRINCIPAL)
        if who is None:  # the Gate did not see this path (a BentoML path_prefix): authenticate here
            who = await caller(ctx.request)
        return json_response(await handler(who, *args))
    except MAPPED as exc:
        err = translate(exc)
        # BentoML gives a returned Response the status of ctx.response (200 unless set).
        ctx.response.status_code = err.status
        return _error(err)
