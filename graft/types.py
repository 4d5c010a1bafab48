"""The JSON shapes the client returns, as TypedDicts: plain dicts (print them, dump them as
JSON) that a type checker still understands. They mirror the server's responses
(service/schemas.py) without importing it: this package speaks HTTP only."""
from __future__ import annotations

from typing import Any, Literal, NotRequired, TypedDict

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ENDED: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class TenantCreated(TypedDict):
    tenant: str
    api_key: str


class TenantDeleted(TypedDict):
    tenant: str
    removed: dict[str, int]


class KeyCreated(TypedDict):
    tenant: str
    key_id: str
    api_key: str
    expires_at: str | None


class KeyInfo(TypedDict):
    key_id: str
    created_at: str
    revoked: bool
    expires_at: str | None


class KeyList(TypedDict):
    tenant: str
    keys: list[KeyInfo]


class CreatedAdapter(TypedDict):
    tenant: str
    adapter: str
    version: int
    backbone: str
    labels: list[str]


class AdapterSummary(TypedDict):
    adapter: str
    backbone: str
    active_version: int | None
    versions: int


class AdapterList(TypedDict):
    tenant: str
    adapters: list[AdapterSummary]


class Version(TypedDict):
    version: int
    active: bool
    created_at: str
    backbone: str
    head: str
    method: str
    lora: dict[str, Any] | None
    unfreeze: dict[str, Any] | None
    bytes: int
    labels: list[str]
    metrics: dict[str, Any]
    training: dict[str, Any]
    parent_version: int | None


class VersionList(TypedDict):
    tenant: str
    adapter: str
    versions: list[Version]


class ActiveVersion(TypedDict):
    tenant: str
    adapter: str
    active_version: int


class Deleted(TypedDict):
    tenant: str
    adapter: str
    deleted: bool


class JobError(TypedDict):
    code: str
    message: str | None


class Job(TypedDict):
    job_id: str
    tenant: str
    adapter: str
    backbone: str
    status: JobState
    progress: float
    metrics: dict[str, Any] | None
    version: int | None
    promoted: bool
    error: JobError | None
    attempts: int
    created_at: str
    finished_at: str | None


class Event(TypedDict):
    """One job event: `n` (1, 2, ...), `at`, `kind` (queued, started, validation, split, epoch,
    early_stop, evaluation, promotion, succeeded, failed, cancelled, ...) and the kind's fields
    (epoch: epoch, train_loss, val_loss, val_macro_f1; evaluation: macro_f1, accuracy, baselines)."""

    n: int
    at: str
    kind: str


class Scored(TypedDict):
    label: str
    score: float


class ItemPrediction(TypedDict):
    label: str
    score: float
    top: list[Scored]
    truncated: bool


class Prediction(TypedDict):
    tenant: str
    adapter: str
    version: int
    backbone: str
    predictions: list[ItemPrediction]


class Embeddings(TypedDict):
    backbone: str
    dim: int
    embeddings: list[list[float]]
    truncated: list[int]


class ImageInput(TypedDict):
    image: str  # base64 PNG or JPEG (a data: URL works too)


class Example(TypedDict):
    label: str
    text: NotRequired[str]
    image: NotRequired[str]
