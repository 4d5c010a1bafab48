"""OpenAI-compatible embeddings: `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{model}`.

For the clients that RAG stacks already use (the `openai` package, LangChain, LlamaIndex):
`base_url="http://host:3000/v1"` and a Graft key (any tenant's key, or the admin key) as the
API key. A model is a text backbone id from the catalogue (`minilm-l6`). Errors come back in
OpenAI's shape `{"error": {"message", "type", "param", "code"}}` with Graft's status codes.

Choices:
- `encoding_format`: `float` (default) or `base64` (little-endian float32 bytes, as OpenAI
  sends them; the `openai` client asks for base64 by default and decodes it itself).
- `dimensions`: only the backbone's own dimension. minilm-l6 was not trained Matryoshka-style,
  so a truncated and renormalised prefix would be a worse, unmeasured embedding: 400.
- `input`: a string or a list of strings. Token-id arrays are refused (400): they are
  tiktoken ids, which mean nothing to the backbone's WordPiece vocabulary.
- `usage`: the tokens the backbone really read (its own tokenizer, special tokens
  included, after truncation to its token limit); `prompt_tokens == total_tokens`.
"""
from __future__ import annotations

import base64
import time
from typing import Any, Literal

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from starlette.responses import Response

from service.compat import answer_wrong_methods, caller, engine, json_response, read_body, speaking, with_error_headers
from service.errors import GraftError, InvalidInput, NotFound, Unavailable

_CREATED = int(time.time())  # OpenAI's `created` for the backbones: when this process started
_FIELDS = {"model", "input", "encoding_format", "dimensions", "user", "input_type"}

# Graft's error kinds as OpenAI's error types and codes (the HTTP status stays Graft's).
_TYPES = {401: "invalid_request_error", 429: "requests", 500: "server_error", 503: "server_error",
          504: "server_error"}
_CODES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}


def render(err: GraftError) -> Response:
    details = err.details if isinstance(err.details, dict) else {}
    param = details.get("param")
    if param is None and "index" in details:
        param = "input"
    code = details.get("openai_code") or _CODES.get(err.status) or err.code
    body = {"error": {"message": err.message, "type": _TYPES.get(err.status, "invalid_request_error"),
                      "param": param, "code": code}}
    return with_error_headers(json_response(body, err.status), err)


class EmbeddingsRequest(BaseModel):
    """OpenAPI description only: the route checks the body itself, to answer in OpenAI's terms."""

    model: str = Field(description="a text backbone id, e.g. minilm-l6 (GET /v1/models)")
    input: str | list[str] = Field(description="a text or a list of texts (at most GRAFT_MAX_BATCH_ITEMS)")
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: little-endian float32 bytes of each vector")
    dimensions: int | None = Field(None, description="only the backbone's own dimension")
    user: str | None = Field(None, description="accepted and ignored")
    input_type: Literal["query", "passage"] = Field(
        "query", description="an extension (as NVIDIA NIM's): passage embeds documents with the backbone's passage "
                             "prompt instead of its query prompt")


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "graft"
    kind: str = Field(description="text or image (only text models embed here)")
    dim: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Model]


class OpenAIError(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorResponse(BaseModel):
    error: OpenAIError


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": OpenAIErrorResponse} for code in (400, 401, 404, 409, 413, 429, 503)
}
router = APIRouter(tags=["OpenAI-compatible"], responses=ERRORS)


def _bad(message: str, param: str | None, code: str = "invalid_input") -> InvalidInput:
    return InvalidInput(message, {"param": param, "openai_code": code})


def _parse(body: bytes) -> tuple[str, list[str], str, int | None, str]:
    """model, texts, encoding_format, dimensions, input_type; or a 400 naming the parameter at fault."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise _bad(f"the body is not valid JSON: {e}", None) from None
    if not isinstance(data, dict):
        raise _bad("the body must be a JSON object", None)
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise _bad(f"unrecognized request argument supplied: {unknown[0]} (accepted: {sorted(_FIELDS)})",
                   unknown[0], "unknown_parameter")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required: a text backbone id such as 'minilm-l6' (GET /v1/models lists them)", "model")
    texts = _texts(data.get("input"))
    encoding = data.get("encoding_format", "float")
    if encoding is None:
        encoding = "float"
    if encoding not in ("float", "base64"):
        raise _bad(f"encoding_format must be 'float' or 'base64', not {encoding!r}", "encoding_format")
    dimensions = data.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        raise _bad("dimensions must be a positive integer", "dimensions")
    user = data.get("user")
    if user is not None and not isinstance(user, str):
        raise _bad("user must be a string", "user")
    input_type = data.get("input_type") or "query"
    if input_type not in ("query", "passage"):
        raise _bad(f"input_type must be 'query' or 'passage', not {input_type!r}", "input_type")
    return model, texts, encoding, dimensions, input_type


def _texts(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise _bad("input is required: a string or an array of strings", "input")
    if not value:
        raise _bad("input is empty: send at least one string", "input")
    if all(isinstance(v, str) for v in value):
        return value
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value) or all(
            isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v) for v in value):
        raise _bad("input as token ids is not supported: they would be read with another tokenizer than "
                   "this model's; send the texts as strings (LangChain: check_embedding_ctx_length=False)",
                   "input", "token_ids_not_supported")
    bad = next(i for i, v in enumerate(value) if not isinstance(v, str))
    raise _bad(f"input[{bad}] is not a string: input is a string or an array of strings", "input")


def _backbone(name: str) -> Any:
    """The loaded backbone called `name` (404 unknown, 409 known but not loaded here, 503 loading)."""
    try:
        return engine().inference.backbone(name)
    except NotFound:
        raise NotFound(f"The model {name!r} does not exist: models here are the backbones "
                       f"{sorted(engine().inference.backbones)} (GET /v1/models)",
                       {"param": "model", "openai_code": "model_not_found"}) from None


def _model(backbone: Any) -> dict[str, Any]:
    return {"id": backbone.id, "object": "model", "created": _CREATED, "owned_by": "graft",
            "kind": backbone.kind, "dim": backbone.dim}


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, openapi_extra={"requestBody": {
    "required": True, "content": {"application/json": {"schema": EmbeddingsRequest.model_json_schema(
        ref_template="#/components/schemas/{model}")}}}})
@speaking(render)
async def embeddings(request: Request) -> Response:
    """OpenAI's embeddings API on a text backbone; vectors are L2-normalised, equal to /v1/embed's."""
    who = await caller(request)
    model, texts, encoding, dimensions, input_type = _parse(await read_body(request))
    backbone = _backbone(model)
    if backbone.kind != "text":
        raise _bad(f"model {model!r} is an {backbone.kind} backbone; /v1/embeddings embeds text only "
                   "(images: POST /v1/embed with {\"image\": base64}, or /v2/models/{name}/infer)", "model",
                   "model_not_supported")
    if dimensions is not None and dimensions != backbone.dim:
        raise _bad(f"dimensions={dimensions}: {model} gives {backbone.dim}-dimensional embeddings and cannot shorten them "
                   f"(it was not trained for truncation); omit dimensions or send {backbone.dim}", "dimensions")
    await engine().admit(who, len(texts))
    out = await engine().inference.embed(list(texts), model, input_type)
    tokens = out.tokens
    vectors = out.vectors
    if encoding == "base64":
        rows: list[Any] = [base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") for v in vectors]
    else:
        rows = list(vectors)  # orjson writes each float32 row as /v1/embed does
    return json_response({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)],
        "model": out.backbone.id,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })


@router.get("/v1/models", response_model=ModelList)
@speaking(render)
async def list_models(request: Request) -> Response:
    """The loaded backbones as OpenAI models (only `kind: text` ones embed on /v1/embeddings)."""
    await caller(request)
    inference = engine().inference
    if not inference.ready:
        raise Unavailable(f"{inference.failure}; see /readyz" if inference.failure
                          else "backbones are still loading; retry shortly (see /readyz)")
    return json_response({"object": "list", "data": [_model(b) for b in inference.backbones.values()]})


@router.get("/v1/models/{model}", response_model=Model)
@speaking(render)
async def get_model(request: Request, model: str) -> Response:
    await caller(request)
    return json_response(_model(_backbone(model)))


answer_wrong_methods(router, render)
