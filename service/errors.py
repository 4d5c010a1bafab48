"""A few typed errors, each mapped once to an HTTP status and a gRPC code."""
from __future__ import annotations

from typing import Any, Callable

from adapters.cache import BackboneNotLoaded
from adapters.format import AdapterFormatError
from adapters.jobs import QueueFull
from adapters.registry import ConflictError, LabelsDropped, NotFoundError, QuotaExceeded
from adapters.zero_shot import LabelError
from sqlalchemy.exc import DBAPIError, IntegrityError


class GraftError(Exception):
    """Base of every error a client may see. `code` is stable; `message` says what to do.

    Each kind carries its HTTP status and its gRPC status code: the one mapping for both.
    """

    status = 500
    code = "internal"
    grpc_status = "INTERNAL"

    def __init__(self, message: str, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            body["details"] = self.details
        return {"error": body}


class InvalidInput(GraftError):
    status, code = 400, "invalid_input"
    grpc_status = "INVALID_ARGUMENT"


class Unauthenticated(GraftError):
    status, code = 401, "unauthenticated"
    grpc_status = "UNAUTHENTICATED"


class Forbidden(GraftError):
    """A valid key that may not do this: a tenant's key on an admin route. (A tenant's key on
    another tenant's resources is NotFound instead: those must not be seen to exist.)"""

    status, code = 403, "forbidden"
    grpc_status = "PERMISSION_DENIED"


class NotFound(GraftError):
    status, code = 404, "not_found"
    grpc_status = "NOT_FOUND"


class MethodNotAllowed(GraftError):
    status, code = 405, "method_not_allowed"
    grpc_status = "UNIMPLEMENTED"


class Conflict(GraftError):
    status, code = 409, "conflict"
    grpc_status = "FAILED_PRECONDITION"


class PayloadTooLarge(GraftError):
    status, code = 413, "payload_too_large"
    grpc_status = "RESOURCE_EXHAUSTED"


class RateLimited(GraftError):
    status, code = 429, "rate_limited"
    grpc_status = "RESOURCE_EXHAUSTED"


class Unavailable(GraftError):
    status, code = 503, "unavailable"
    grpc_status = "UNAVAILABLE"


class DeadlineExceeded(GraftError):
    """The caller's deadline passed before its items were served (gRPC deadlines)."""

    status, code = 504, "deadline_exceeded"
    grpc_status = "DEADLINE_EXCEEDED"



# The one place where errors raised by adapters/ become client-facing errors.
_DOMAIN: list[tuple[type[Exception], Callable[[Exception], GraftError]]] = [
    (QueueFull, lambda e: RateLimited(f"the fine-tune queue is full: {e}", headers={"Retry-After": "30"})),
    (QuotaExceeded, lambda e: RateLimited(str(e))),
    (IntegrityError, lambda e: Conflict("a concurrent change collided with this one; retry")),
    (DBAPIError, lambda e: Unavailable("the registry database is unreachable; retry shortly")),
    (NotFoundError, lambda e: NotFound(str(e))),
    (LabelsDropped, lambda e: Conflict(str(e), e.details)),  # type: ignore[attr-defined]
    (ConflictError, lambda e: Conflict(str(e))),
    (BackboneNotLoaded, lambda e: Conflict(str(e))),
    (AdapterFormatError, lambda e: Conflict(f"the active adapter version cannot be served: {e}")),
    (LabelError, lambda e: InvalidInput(str(e))),
]
DOMAIN_ERRORS: tuple[type[Exception], ...] = tuple(t for t, _ in _DOMAIN)


def translate(exc: Exception) -> GraftError:
    if isinstance(exc, GraftError):
        return exc
    for kind, make in _DOMAIN:
        if isinstance(exc, kind):
            return make(exc)
    raise TypeError(f"no client mapping for {type(exc).__name__}") from exc


def from_validation(errors: list[Any]) -> InvalidInput:
    """pydantic's errors as one 400 / INVALID_ARGUMENT that names the field at fault."""
    problems = [
        {"where": ".".join(str(p) for p in e.get("loc", ())) or "body", "problem": e.get("msg", "")}
        for e in errors
    ]
    first = problems[0] if problems else {"where": "body", "problem": "invalid request"}
    return InvalidInput(f"{first['where']}: {first['problem']}", problems)
