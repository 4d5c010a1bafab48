"""Open Inference Protocol v2 (REST), as KServe and Triton speak it, for `tritonclient` and
KServe tooling.

Models:
- a backbone, by its id (`minilm-l6`, `efficientnet-lite0`): one BYTES input, `text`
  (UTF-8 texts) or `image` (PNG/JPEG bytes; base64 strings in the JSON form) -> output
  `embedding`, FP32 [n, dim], L2-normalised rows (equal to /v1/embed's).
- a tenant's adapter, as `<tenant>.<adapter>` (`acme.support`): the same input, as its
  backbone takes -> `label`, BYTES [n] (the top label) and `scores`, FP32 [n, classes]. The
  columns of `scores` follow the labels sorted by name, listed in the model metadata's
  `parameters.labels` and in the `scores` output's own `parameters.labels`. The separator is
  a dot because Graft's names (service/schemas.NAME_PATTERN, `^[a-z0-9][a-z0-9-]{0,62}$`)
  never contain one, it needs no escaping in a URL path, and v2 model names allow it; a
  name without a dot is a backbone. An adapter serves its active version; the
  `/versions/{v}/` paths answer only for that version (backbones have none).

Tensors: the JSON form (`data` flat in row-major order, or nested), and the binary tensor
data extension that tritonclient uses by default (`Inference-Header-Content-Length`: the
JSON header, then each binary input's bytes; BYTES elements as a 4-byte little-endian
length and the bytes). Outputs come back binary when the request asks for it (per output
`parameters.binary_data`, or `parameters.binary_data_output` for all), else as JSON.
Not supported (400 saying so): shared memory, the classification extension, compressed
request bodies.

Every route but /v2/health/* needs `Authorization: Bearer <key>` (a tenant's key: its own
adapters and every backbone; the admin key: everything). Errors are `{"error": "message"}`
with Graft's status codes (400, 401, 404, 409, 413, 429, 503).
"""
from __future__ import annotations

import math
import re
import struct
from importlib import metadata
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.responses import Response

from service.compat import answer_wrong_methods, caller, engine, json_response, read_body, speaking, with_error_headers
from service.errors import Conflict, GraftError, InvalidInput, NotFound, from_validation
from service.items import image_bytes
from service.schemas import NAME_PATTERN

SEPARATOR = "."
_NAME = re.compile(NAME_PATTERN)
_INPUT_BY_KIND = {"text": "text", "image": "image"}
_ALL_LABELS = 1 << 30  # top_k that ranks every label


def render(err: GraftError) -> Response:
    return with_error_headers(json_response({"error": err.message}, err.status), err)


class TensorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = Field(None, description="flat (row-major) or nested; absent when parameters.binary_data_size says "
                                        "the bytes follow the JSON header")


class TensorRequested(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    parameters: dict[str, Any] | None = None


class InferRequest(BaseModel):
    """An inference request: one BYTES input (`text` or `image`); `outputs` optional."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[TensorIn]
    outputs: list[TensorRequested] | None = None


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str] | None = None
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: dict[str, Any] = {}


class TensorOut(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    outputs: list[TensorOut]


class V2Error(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": V2Error} for code in (400, 401, 404, 409, 413, 429, 503)}
router = APIRouter(tags=["Open Inference Protocol v2"], responses=ERRORS)

INFER_BODY = {"requestBody": {"required": True, "description": (
    "JSON; or, with the header Inference-Header-Content-Length, that many bytes of JSON followed by the "
    "binary tensor data"), "content": {"application/json": {
        "schema": InferRequest.model_json_schema(ref_template="#/components/schemas/{model}")}}}}


# -- models --------------------------------------------------------------------------------


class Model:
    """What a v2 model name stands for: a backbone, or (tenant, adapter)."""

    def __init__(self, name: str, backbone: Any = None, tenant: str | None = None, adapter: str | None = None):
        self.name, self.backbone, self.tenant, self.adapter = name, backbone, tenant, adapter


def _unknown(name: str) -> NotFound:
    loaded = sorted(engine().inference.backbones)
    return NotFound(f"unknown model {name!r}: a model is a backbone ({', '.join(loaded) or 'none loaded yet'}) "
                    f"or a tenant's adapter as '<tenant>{SEPARATOR}<adapter>'")


def resolve(name: str) -> Model:
    tenant, sep, adapter = name.partition(SEPARATOR)
    if sep:
        if not (_NAME.match(tenant) and _NAME.match(adapter)):
            raise _unknown(name)
        return Model(name, tenant=tenant, adapter=adapter)
    try:
        return Model(name, backbone=engine().inference.backbone(name))
    except NotFound:
        raise _unknown(name) from None


async def _active(model: Model, version: str | None) -> tuple[Any, list[Any]]:
    """The adapter's active version (and all its versions), or 404/409."""
    assert model.tenant is not None and model.adapter is not None
    versions = await engine().versions.list_versions(model.tenant, model.adapter)
    active = next((v for v in versions if v.active), None)
    if active is None:
        raise Conflict(f"model {model.name!r} has no active version: promote one")
    _check_version(model, version, active.version)
    return active, versions


def _check_version(model: Model, version: str | None, active: int | None) -> None:
    if version is None:
        return
    if model.backbone is not None:
        raise NotFound(f"model {model.name!r} is a backbone and has no versions: leave the version out")
    if version != str(active):
        raise NotFound(f"model {model.name!r} version {version!r} is not serving: Graft serves an adapter's "
                       f"active version ({active}); promote the one you want")


async def _authorized(request: Request, name: str) -> Model:
    who = await caller(request)
    model = resolve(name)
    if model.tenant is not None:
        who.authorize(model.tenant)
    return model


async def _metadata(model: Model, version: str | None) -> dict[str, Any]:
    if model.backbone is not None:
        _check_version(model, version, None)
        b = model.backbone
        return {
            "name": model.name, "platform": "graft_onnxruntime",
            "inputs": [{"name": _INPUT_BY_KIND[b.kind], "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": "embedding", "datatype": "FP32", "shape": [-1, b.dim]}],
            "parameters": {"kind": b.kind, "dim": b.dim, "fingerprint": b.fingerprint,
                           "precision": b.precision, "provider": b.provider},
        }
    active, versions = await _active(model, version)
    config = active.config
    backbone = engine().inference.backbone(config.backbone)
    labels = sorted(config.labels)
    return {
        "name": model.name, "versions": [str(v.version) for v in versions], "platform": "graft_adapter",
        "inputs": [{"name": _INPUT_BY_KIND[backbone.kind], "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1, len(labels)]}],
        "parameters": {"labels": labels, "tenant": model.tenant, "adapter": model.adapter,
                       "active_version": active.version, "backbone": config.backbone,
                       "head": config.head, "method": config.method},
    }


# -- tensors -------------------------------------------------------------------------------


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """The JSON header and the binary tensor data after it."""
    if header_length is None:
        return body, b""
    if not header_length.strip().isdigit() or not 0 < int(header_length) <= len(body):
        raise InvalidInput(f"Inference-Header-Content-Length is {header_length!r}: it must be the length of the "
                           f"JSON header, between 1 and the body's {len(body)} bytes")
    n = int(header_length)
    return body[:n], body[n:]


def _flatten(data: Any) -> list[Any]:
    """Row-major elements of a flat or nested list (iterative: no recursion limit to hit)."""
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
        else:
            stack.pop()
    return out


def _deserialize_bytes(buffer: bytes, where: str) -> list[bytes]:
    """A BYTES tensor in the binary extension: each element a uint32 LE length, then its bytes."""
    out, i = [], 0
    while i < len(buffer):
        if i + 4 > len(buffer):
            raise InvalidInput(f"{where}: binary BYTES data ends inside an element's 4-byte length")
        (size,) = struct.unpack_from("<I", buffer, i)
        i += 4
        if i + size > len(buffer):
            raise InvalidInput(f"{where}: binary BYTES element {len(out)} says {size} bytes; "
                               f"only {len(buffer) - i} follow")
        out.append(buffer[i:i + size])
        i += size
    return out


def _items(request: InferRequest, binary: bytes, model: Model) -> list[str | bytes]:
    """The input tensor's elements as engine items: texts as str, images as bytes."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"model {model.name!r} takes one input tensor ('text' or 'image'); "
                           f"got {len(request.inputs)}")
    tensor = request.inputs[0]
    where = f"input {tensor.name!r}"
    expected = _INPUT_BY_KIND[model.backbone.kind] if model.backbone is not None else None
    if tensor.name not in _INPUT_BY_KIND.values() or (expected and tensor.name != expected):
        raise InvalidInput(f"{where}: model {model.name!r} takes the input "
                           f"{repr(expected) if expected else repr('text') + ' or ' + repr('image')} "
                           "(see GET /v2/models/{name})")
    if tensor.datatype != "BYTES":
        raise InvalidInput(f"{where}: datatype must be BYTES (texts or encoded images), not {tensor.datatype!r}")
    if not tensor.shape or any(d < 0 for d in tensor.shape):
        raise InvalidInput(f"{where}: shape {tensor.shape} must be a list of non-negative sizes, e.g. [n]")
    parameters = tensor.parameters or {}
    unsupported = sorted(k for k in parameters if k.startswith("shared_memory"))
    if unsupported:
        raise InvalidInput(f"{where}: shared memory is not supported here; send the data in the request")
    size = parameters.get("binary_data_size")
    if size is not None:
        if tensor.data is not None:
            raise InvalidInput(f"{where}: has both data and parameters.binary_data_size; send one")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > len(binary):
            raise InvalidInput(f"{where}: parameters.binary_data_size is {size!r}, but {len(binary)} bytes of "
                               "binary data follow the JSON header")
        if size != len(binary):
            raise InvalidInput(f"{where}: parameters.binary_data_size is {size}, but {len(binary)} bytes of "
                               "binary data follow the JSON header")
        elements: list[Any] = _deserialize_bytes(binary, where)
    else:
        if binary:
            raise InvalidInput(f"{len(binary)} bytes follow the JSON header but no input names them "
                               "(parameters.binary_data_size)")
        if tensor.data is None:
            raise InvalidInput(f"{where}: no data: send `data`, or binary data with parameters.binary_data_size")
        elements = _flatten(tensor.data)
    if len(elements) != math.prod(tensor.shape):
        raise InvalidInput(f"{where}: shape {tensor.shape} holds {math.prod(tensor.shape)} elements; "
                           f"the data has {len(elements)}")
    items: list[str | bytes] = []
    for i, value in enumerate(elements):
        if isinstance(value, bytes):  # binary form: texts are UTF-8, images their own bytes
            if tensor.name == "image":
                items.append(value)
                continue
            try:
                items.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInput(f"{where}: element {i} is not UTF-8 text") from None
        elif not isinstance(value, str):
            raise InvalidInput(f"{where}: element {i} is {type(value).__name__}; BYTES elements in JSON are strings "
                               "(texts, or base64 images)")
        elif tensor.name == "image":
            items.append(image_bytes(value, f"{where} element {i}"))
        else:
            items.append(value)
    return items


def _requested(request: InferRequest, available: list[str]) -> list[tuple[str, bool]]:
    """The outputs to send, each with whether it goes binary."""
    default = (request.parameters or {}).get("binary_data_output", False)
    if not isinstance(default, bool):
        raise InvalidInput("parameters.binary_data_output must be true or false")
    if request.outputs is None:
        return [(name, default) for name in available]
    chosen = []
    for out in request.outputs:
        if out.name not in available:
            raise InvalidInput(f"unknown output {out.name!r}: this model has {available}")
        parameters = out.parameters or {}
        if "classification" in parameters:
            raise InvalidInput(f"output {out.name!r}: the classification extension is not supported; "
                               "ask for 'label' and 'scores'")
        if any(k.startswith("shared_memory") for k in parameters):
            raise InvalidInput(f"output {out.name!r}: shared memory is not supported here")
        binary = parameters.get("binary_data", default)
        if not isinstance(binary, bool):
            raise InvalidInput(f"output {out.name!r}: parameters.binary_data must be true or false")
        chosen.append((out.name, binary))
    return chosen


def _serialize_bytes(values: list[str]) -> bytes:
    parts = []
    for value in values:
        data = value.encode("utf-8")
        parts += [struct.pack("<I", len(data)), data]
    return b"".join(parts)


def _response(head: dict[str, Any], outputs: dict[str, tuple[str, Any, dict[str, Any]]],
              requested: list[tuple[str, bool]]) -> Response:
    tensors, chunks = [], []
    for name, binary in requested:
        datatype, value, parameters = outputs[name]
        shape = list(np.shape(value)) if datatype == "FP32" else [len(value)]
        tensor: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        params = dict(parameters)
        if binary:
            raw = np.ascontiguousarray(value, dtype="<f4").tobytes() if datatype == "FP32" else _serialize_bytes(value)
            params["binary_data_size"] = len(raw)
            chunks.append(raw)
        else:
            tensor["data"] = np.asarray(value, dtype=np.float32).ravel() if datatype == "FP32" else list(value)
        if params:
            tensor["parameters"] = params
        tensors.append(tensor)
    header = orjson.dumps({**head, "outputs": tensors}, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return Response(header, media_type="application/json")
    return Response(header + b"".join(chunks), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


# -- routes --------------------------------------------------------------------------------


@router.get("/v2/health/live", responses={200: {"content": {"application/json": {"example": {"live": True}}}}})
async def live() -> Response:
    """200 as soon as the process serves (open, like /livez)."""
    return json_response({"live": True})


@router.get("/v2/health/ready", responses={200: {"content": {"application/json": {"example": {"ready": True}}}}})
async def ready() -> Response:
    """200 once the Engine is ready (every backbone loaded), 503 before (open, like /readyz)."""
    try:
        is_ready = engine().ready
    except Exception:  # the service is not created yet
        is_ready = False
    if is_ready:
        return json_response({"ready": True})
    return json_response({"ready": False, "error": "backbones are still loading (see /readyz)"}, 503)


@router.get("/v2")
@speaking(render)
async def server_metadata(request: Request) -> Response:
    await caller(request)
    try:
        version = metadata.version("graft")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return json_response({"name": "graft", "version": version, "extensions": ["binary_tensor_data"]})


@router.get("/v2/models/{name}", response_model=ModelMetadata)
@speaking(render)
async def model_metadata(request: Request, name: str) -> Response:
    """Inputs, outputs (datatype, shape) and parameters (an adapter's labels, in the order of
    the columns of `scores`)."""
    return json_response(await _metadata(await _authorized(request, name), None))


@router.get("/v2/models/{name}/versions/{version}", response_model=ModelMetadata)
@speaking(render)
async def model_version_metadata(request: Request, name: str, version: str) -> Response:
    return json_response(await _metadata(await _authorized(request, name), version))


async def _ready(request: Request, name: str, version: str | None) -> Response:
    model = await _authorized(request, name)
    if model.backbone is None:
        active, _ = await _active(model, version)
        engine().inference.backbone(active.config.backbone)  # 503 while it loads, 409 if not here
    else:
        _check_version(model, version, None)
    return json_response({"name": name, "ready": True})


@router.get("/v2/models/{name}/ready")
@speaking(render)
async def model_ready(request: Request, name: str) -> Response:
    """200 when the model can serve; 404 unknown, 409 an adapter without an active version."""
    return await _ready(request, name, None)


@router.get("/v2/models/{name}/versions/{version}/ready")
@speaking(render)
async def model_version_ready(request: Request, name: str, version: str) -> Response:
    return await _ready(request, name, version)


async def _infer(request: Request, name: str, version: str | None) -> Response:
    who = await caller(request)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise InvalidInput(f"Content-Encoding {encoding!r} is not supported: send the request uncompressed")
    header, binary = _split_body(await read_body(request), request.headers.get("inference-header-content-length"))
    try:
        body = InferRequest.model_validate_json(header)
    except ValidationError as e:
        raise from_validation(list(e.errors(include_url=False))) from e
    model = resolve(name)
    if model.tenant is not None:
        who.authorize(model.tenant)
    if model.backbone is not None:
        _check_version(model, version, None)
    items = _items(body, binary, model)
    head: dict[str, Any] = {"model_name": name}
    if body.id is not None:
        head["id"] = body.id
    if model.backbone is not None:
        requested = _requested(body, ["embedding"])
        await engine().admit(who, len(items))
        out = await engine().inference.embed(items, model.backbone.id)
        return _response(head, {"embedding": ("FP32", out.vectors, {})}, requested)
    assert model.tenant is not None and model.adapter is not None
    requested = _requested(body, ["label", "scores"])
    await engine().admit(who, len(items))
    prediction = await engine().inference.predict(model.tenant, model.adapter, items, _ALL_LABELS)
    _check_version(model, version, prediction.version)
    labels = sorted(t["label"] for t in prediction.predictions[0]["top"])
    scores = np.array([[{t["label"]: t["score"] for t in p["top"]}[label] for label in labels]
                       for p in prediction.predictions], dtype=np.float32)
    head["model_version"] = str(prediction.version)
    return _response(head, {
        "label": ("BYTES", [p["label"] for p in prediction.predictions], {}),
        "scores": ("FP32", scores, {"labels": labels}),
    }, requested)


@router.post("/v2/models/{name}/infer", response_model=InferResponse, openapi_extra=INFER_BODY)
@speaking(render)
async def infer(request: Request, name: str) -> Response:
    """Embed with a backbone, or classify with a tenant's adapter (`<tenant>.<adapter>`)."""
    return await _infer(request, name, None)


@router.post("/v2/models/{name}/versions/{version}/infer", response_model=InferResponse, openapi_extra=INFER_BODY)
@speaking(render)
async def infer_version(request: Request, name: str, version: str) -> Response:
    """As /v2/models/{name}/infer; answers only when `version` is the adapter's active one."""
    return await _infer(request, name, version)


answer_wrong_methods(router, render)
