"""Open Inference Protocol v2 routes (SPEC 4): health, metadata and inference."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request

from . import __version__
from .batcher import Closed, QueueFull
from .body import read_body_within
from .codec import HEADER_LENGTH, decode_infer, encode_infer
from .context import ctx_of
from .errors import ApiError
from .responses import OrjsonResponse, PartsResponse
from .schemas import InferenceRequest, request_body

router = APIRouter(default_response_class=OrjsonResponse)
VERSION = "1"


def _version(name: str, version: str) -> None:
    if version != VERSION:
        raise ApiError(404, f"model {name!r}: unknown version {version!r} (only '1')")


@router.get("/v2")
async def server_metadata() -> dict:
    return {"name": "normserve", "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/v2/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/v2/health/ready")
async def ready(request: Request) -> OrjsonResponse:
    ctx = ctx_of(request)
    models = ctx.registry.models.values()
    if ctx.draining:
        return OrjsonResponse({"ready": False, "error": "server is shutting down"}, 503)
    if not all(m.ready for m in models):
        warm = sum(m.ready for m in models)
        return OrjsonResponse({"ready": False, "error": f"warming up: {warm} of {len(models)} "
                                                        "models compiled"}, 503)
    return OrjsonResponse({"ready": True})


@router.get("/v2/models/{name}")
async def model_metadata(name: str, request: Request) -> dict:
    return ctx_of(request).registry.get(name).metadata()


@router.get("/v2/models/{name}/versions/{version}")
async def model_version_metadata(name: str, version: str, request: Request) -> dict:
    model = ctx_of(request).registry.get(name)
    _version(name, version)
    return model.metadata()


@router.get("/v2/models/{name}/config")
async def model_config(name: str, request: Request) -> dict:
    model = ctx_of(request).registry.get(name)
    return {"name": name, **model.config.model_dump(), "hyper": model.layer.describe()}


async def _model_ready(name: str, request: Request) -> OrjsonResponse:
    model = ctx_of(request).registry.get(name)
    if not model.ready:
        return OrjsonResponse({"name": name, "ready": False,
                               "error": f"model {name!r}: warming up"}, 503)
    return OrjsonResponse({"name": name, "ready": True})


@router.get("/v2/models/{name}/ready")
async def model_ready(name: str, request: Request) -> OrjsonResponse:
    return await _model_ready(name, request)


@router.get("/v2/models/{name}/versions/{version}/ready")
async def model_version_ready(name: str, version: str, request: Request) -> OrjsonResponse:
    ctx_of(request).registry.get(name)
    _version(name, version)
    return await _model_ready(name, request)


_INFER_DOC = request_body(InferenceRequest)


# These two routes document the protocol in /openapi.json; requests to them are served by
# ``fastpath.InferFastPath`` before FastAPI's router is reached.
@router.post("/v2/models/{name}/infer", openapi_extra=_INFER_DOC)
async def infer(name: str, request: Request) -> PartsResponse:
    return await infer_request(name, request)


@router.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=_INFER_DOC)
async def infer_version(name: str, version: str, request: Request) -> PartsResponse:
    check_version(request, name, version)
    return await infer_request(name, request)


def check_version(request: Request, name: str, version: str) -> None:
    """404 for an unknown model, then for a version other than the one served."""
    ctx_of(request).registry.get(name)
    _version(name, version)


async def infer_request(name: str, request: Request) -> PartsResponse:
    """Decode, queue for a batch, encode: the hot path."""
    start = time.perf_counter()
    ctx = ctx_of(request)
    model = ctx.registry.get(name)
    settings = ctx.settings
    try:
        body = await read_body_within(request, settings.max_body_bytes,
                                      settings.request_timeout)
        call = decode_infer(body, request.headers.get(HEADER_LENGTH), ctx.limits)
        model.check_input(call.array.shape, "inputs[0].shape")
        timeout = min(call.timeout_s or settings.request_timeout, settings.request_timeout)
        try:
            out, timing = await model.batcher.submit(call.array, timeout)
        except QueueFull:
            ctx.metrics.observe_failure(name, "REJECTED")
            raise ApiError(503, f"model {name!r}: queue is full "
                                f"({model.batcher.max_queue_size} requests); retry later",
                           {"Retry-After": "1"}) from None
        except asyncio.TimeoutError:
            ctx.metrics.observe_failure(name, "TIMEOUT")
            raise ApiError(503, f"model {name!r}: no result within {timeout:g} s (the request "
                                "timeout); retry later", {"Retry-After": "1"}) from None
        except Closed:
            ctx.metrics.observe_failure(name, "UNAVAILABLE")
            raise ApiError(503, f"model {name!r}: is being removed or the server is shutting "
                                "down", {"Retry-After": "1"}) from None
    except ApiError as exc:
        if exc.status != 503:
            ctx.metrics.observe_failure(name, "BAD_REQUEST")
        raise
    parts, headers = encode_infer(name, call, out)
    ctx.metrics.observe_success(name, time.perf_counter() - start, timing.queue_s)
    return PartsResponse(parts, headers)
