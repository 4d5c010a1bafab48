"""Request and response bodies of the HTTP contract (pydantic at the edge)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class EmbedRequest(_Strict):
    inputs: list[str] = Field(description="texts to embed (at most GRAFT_MAX_BATCH_ITEMS)")
    backbone: str | None = Field(None, description="backbone id; default GRAFT_DEFAULT_BACKBONE")


class EmbedResponse(BaseModel):
    backbone: str
    dim: int
    embeddings: list[list[float]]
    truncated: list[int] = Field(
        description="indices of inputs cut to the backbone's token limit before embedding"
    )


class ErrorBody(BaseModel):
    code: str
    message: str
    details: object | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
