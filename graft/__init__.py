"""Graft's client: a typed Python client (`graft.Client`) and the `graft` command line
(graft/cli.py). It speaks Graft's HTTP API only and imports nothing of the service."""
from graft.client import DEFAULT_URL, Client
from graft.errors import (
    BadRequest, Conflict, ConnectionFailed, Forbidden, GraftError, NotFound, PayloadTooLarge, RateLimited,
    ServerError, Unauthenticated, Unavailable,
)

__all__ = [
    "DEFAULT_URL", "Client", "GraftError", "ConnectionFailed", "BadRequest", "Unauthenticated", "Forbidden",
    "NotFound", "Conflict", "PayloadTooLarge", "RateLimited", "ServerError", "Unavailable",
]
