"""Errors the client raises: one base, `GraftError`, carrying what the server said.

`status` is the HTTP status (None when no answer came), `code` the server's stable error
code (`invalid_input`, `not_found`, ...), `message` the server's own words, `details` its
optional details (for 400: the fields at fault).
"""
from __future__ import annotations

from typing import Any


class GraftError(Exception):
    """Base of every error the Graft client raises."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 details: Any = None, url: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details
        self.url = url
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return f"{self.status} {self.code or 'error'}: {self.message}"


class ConnectionFailed(GraftError):
    """No answer: the server cannot be reached (not running, wrong URL, network) or timed out.
    `status` is None; `code` is `unreachable`, `timeout` or `bad_url`."""


class BadRequest(GraftError):
    """A 4xx: the server refused the request; `message` says what to fix."""


class Unauthenticated(BadRequest):
    """401: no key, or an unknown, malformed, expired or revoked one."""


class Forbidden(BadRequest):
    """403: the key may not do this (an admin route called with a tenant key)."""


class NotFound(BadRequest):
    """404: an unknown tenant, adapter, version, job or backbone."""


class Conflict(BadRequest):
    """409: the request does not fit the current state (an adapter that exists, nothing to roll back to)."""


class PayloadTooLarge(BadRequest):
    """413: too many items, or a text, image or upload over the server's limits."""


class RateLimited(BadRequest):
    """429: the tenant's rate or quota, or a full fine-tune queue; `retry_after` in seconds when given."""


class ServerError(GraftError):
    """A 5xx: the server failed or is unavailable; retrying later may work."""


class Unavailable(ServerError):
    """503: the backbones are loading, the registry is unreachable, or a queue is full."""


_BY_STATUS: dict[int, type[GraftError]] = {
    401: Unauthenticated, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge, 429: RateLimited,
    503: Unavailable,
}


def error_for(status: int, body: Any, url: str | None = None, retry_after: str | None = None) -> GraftError:
    """The error for a non-2xx answer: `body` is the decoded JSON (Graft's
    `{"error": {"code", "message", "details"?}}`) or the raw text of another answer."""
    code, details = None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code, message, details = err.get("code"), str(err.get("message") or ""), err.get("details")
    else:
        message = (body if isinstance(body, str) else repr(body)).strip()[:500] or f"HTTP {status}"
    kind = _BY_STATUS.get(status) or (BadRequest if 400 <= status < 500 else ServerError)
    wait = None
    if retry_after:
        try:
            wait = float(retry_after)
        except ValueError:
            pass
    return kind(message, status=status, code=code, details=details, url=url, retry_after=wait)
