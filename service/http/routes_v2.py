"""Open Inference Protocol v2 over HTTP (SPEC 4, 7): the HTTP transport of ``DataPlane``.

Each route reads its request, asks the data plane and writes its answer; the data plane's
``ApiError`` becomes the JSON error body in one place (``http.errors``).
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from ..core.calls import InferCall
from ..core.dataplane import DataPlane
from ..core.errors import InvalidInput
from . import tags
from .body import json_body, read_body_within
from .codec import HEADER_LENGTH, decode_infer, encode_infer
from .request import ctx_of
from .responses import OrjsonResponse, PartsResponse
from .schemas import InferenceRequest, request_body

router = APIRouter(default_response_class=OrjsonResponse)


def _dp(request: Request) -> DataPlane:
    return ctx_of(request).dataplane


def _readiness(payload: dict, why: str | None) -> OrjsonResponse:
    if why is None:
        return OrjsonResponse({**payload, "ready": True})
    return OrjsonResponse({**payload, "ready": False, "error": why}, 503)


@router.get("/v2", tags=[tags.METADATA])
async def server_metadata(request: Request) -> dict:
    return _dp(request).server_metadata()


@router.get("/v2/health/live", tags=[tags.HEALTH])
async def live() -> dict:
    return {"live": True}


@router.get("/v2/health/ready", tags=[tags.HEALTH])
async def ready(request: Request) -> OrjsonResponse:
    return _readiness({}, _dp(request).ready())


# Before /v2/models/{name}, which would take "stats" for a model name.
@router.get("/v2/models/stats", tags=[tags.STATISTICS])
async def all_statistics(request: Request) -> dict:
    return _dp(request).statistics()


@router.get("/v2/models/{name}", tags=[tags.METADATA])
async def model_metadata(name: str, request: Request) -> dict:
    return _dp(request).model_metadata(name)


@router.get("/v2/models/{name}/versions/{version}", tags=[tags.METADATA])
async def model_version_metadata(name: str, version: str, request: Request) -> dict:
    return _dp(request).model_metadata(name, version)


@router.get("/v2/models/{name}/config", tags=[tags.MODEL_CONFIG])
async def model_config(name: str, request: Request) -> dict:
    return _dp(request).model_config(name)


@router.get("/v2/models/{name}/versions/{version}/config", tags=[tags.MODEL_CONFIG])
async def model_version_config(name: str, version: str, request: Request) -> dict:
    return _dp(request).model_config(name, version)


@router.get("/v2/models/{name}/ready", tags=[tags.HEALTH])
async def model_ready(name: str, request: Request) -> OrjsonResponse:
    return _readiness({"name": name}, _dp(request).model_ready(name))


@router.get("/v2/models/{name}/versions/{version}/ready", tags=[tags.HEALTH])
async def model_version_ready(name: str, version: str, request: Request) -> OrjsonResponse:
    return _readiness({"name": name}, _dp(request).model_ready(name, version))


@router.get("/v2/models/{name}/stats", tags=[tags.STATISTICS])
async def model_statistics(name: str, request: Request) -> dict:
    return _dp(request).statistics(name)


@router.get("/v2/models/{name}/versions/{version}/stats", tags=[tags.STATISTICS])
async def model_version_statistics(name: str, version: str, request: Request) -> dict:
    return _dp(request).statistics(name, version)


@router.post("/v2/repository/index", tags=[tags.REPOSITORY])
async def repository_index(request: Request) -> list:
    body = await json_body(request, ctx_of(request).settings, allow_empty=True)
    ready = body.get("ready", False) if isinstance(body, dict) else None
    if not isinstance(ready, bool):
        raise InvalidInput("ready: must be true or false")
    return _dp(request).repository_index(ready, request.headers.get("authorization"))


@router.post("/v2/repository/models/{name}/load", tags=[tags.REPOSITORY])
async def repository_load(name: str, request: Request) -> dict:
    authorization = request.headers.get("authorization")
    _dp(request).check_admin(authorization)  # before reading a body
    body = await json_body(request, ctx_of(request).settings, allow_empty=True)
    parameters = body.get("parameters") if isinstance(body, dict) else None
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInput("parameters: must be a JSON object")
    await _dp(request).load(name, authorization, parameters)
    return {}


@router.post("/v2/repository/models/{name}/unload", tags=[tags.REPOSITORY])
async def repository_unload(name: str, request: Request) -> dict:
    await _dp(request).unload(name, request.headers.get("authorization"))
    return {}


@router.get("/v2/systemsharedmemory/status", tags=[tags.SHARED_MEMORY])
async def shm_status(request: Request) -> list:
    return _dp(request).shm.status()


@router.get("/v2/systemsharedmemory/region/{region}/status", tags=[tags.SHARED_MEMORY])
async def shm_region_status(region: str, request: Request) -> list:
    return _dp(request).shm.status(region)


@router.post("/v2/systemsharedmemory/region/{region}/register",
             tags=[tags.SHARED_MEMORY])
async def shm_register(region: str, request: Request) -> dict:
    body = await json_body(request, ctx_of(request).settings)
    if not isinstance(body, dict):
        raise InvalidInput("body: must be a JSON object with key, offset and byte_size")
    _dp(request).shm.register(region, body.get("key"), body.get("offset", 0),
                              body.get("byte_size"))
    return {}


@router.post("/v2/systemsharedmemory/region/{region}/unregister",
             tags=[tags.SHARED_MEMORY])
async def shm_unregister(region: str, request: Request) -> dict:
    _dp(request).shm.unregister(region)
    return {}


@router.post("/v2/systemsharedmemory/unregister", tags=[tags.SHARED_MEMORY])
async def shm_unregister_all(request: Request) -> dict:
    _dp(request).shm.unregister()
    return {}


# CUDA shared memory is not served: as on gRPC, no region is ever registered (an empty status,
# unregistering is a no-op) and registering is refused (501), never a 404 for the route.
_UNSUPPORTED = {501: {"description": "Not served by this server (Triton's UNSUPPORTED)"}}

@router.get("/v2/cudasharedmemory/status", tags=[tags.SHARED_MEMORY])
async def cuda_shm_status(request: Request) -> list:
    return _dp(request).cuda_shm.status()


@router.get("/v2/cudasharedmemory/region/{region}/status", tags=[tags.SHARED_MEMORY])
async def cuda_shm_region_status(region: str, request: Request) -> list:
    return _dp(request).cuda_shm.status(region)


@router.post("/v2/cudasharedmemory/region/{region}/register", tags=[tags.SHARED_MEMORY],
             responses=_UNSUPPORTED)
async def cuda_shm_register(region: str, request: Request) -> dict:
    _dp(request).cuda_shm.register(region)
    return {}


@router.post("/v2/cudasharedmemory/region/{region}/unregister", tags=[tags.SHARED_MEMORY])
async def cuda_shm_unregister(region: str, request: Request) -> dict:
    _dp(request).cuda_shm.unregister(region)
    return {}


@router.post("/v2/cudasharedmemory/unregister", tags=[tags.SHARED_MEMORY])
async def cuda_shm_unregister_all(request: Request) -> dict:
    _dp(request).cuda_shm.unregister()
    return {}


@router.get("/v2/trace/setting", tags=[tags.LOGGING], responses=_UNSUPPORTED)
@router.post("/v2/trace/setting", tags=[tags.LOGGING], responses=_UNSUPPORTED)
async def trace_settings(request: Request) -> dict:
    _dp(request).trace_settings()


@router.get("/v2/models/{name}/trace/setting", tags=[tags.LOGGING], responses=_UNSUPPORTED)
@router.post("/v2/models/{name}/trace/setting", tags=[tags.LOGGING], responses=_UNSUPPORTED)
async def model_trace_settings(name: str, request: Request) -> dict:
    _dp(request).trace_settings(name)


@router.get("/v2/logging", tags=[tags.LOGGING])
async def log_settings(request: Request) -> dict:
    return _dp(request).logs.get()


@router.post("/v2/logging", tags=[tags.LOGGING])
async def update_log_settings(request: Request) -> dict:
    return _dp(request).logs.update(await json_body(request, ctx_of(request).settings))


_INFER_DOC = request_body(InferenceRequest)


# These two routes document the protocol in /openapi.json; requests to them are served by
# ``fastpath.InferFastPath`` before FastAPI's router is reached.
@router.post("/v2/models/{name}/infer", openapi_extra=_INFER_DOC, tags=[tags.INFERENCE])
async def infer(name: str, request: Request) -> PartsResponse:
    return await infer_request(request, name)


@router.post("/v2/models/{name}/versions/{version}/infer", openapi_extra=_INFER_DOC,
             tags=[tags.INFERENCE])
async def infer_version(name: str, version: str, request: Request) -> PartsResponse:
    return await infer_request(request, name, version)


async def infer_request(request: Request, name: str, version: str | None = None
                        ) -> PartsResponse:
    """Read and decode the body, infer through the data plane, encode: the hot path."""
    ctx = ctx_of(request)
    settings = ctx.settings

    async def decode() -> InferCall:
        body = await read_body_within(request, settings.max_body_bytes,
                                      settings.request_timeout)
        return decode_infer(body, request.headers.get(HEADER_LENGTH), ctx.limits,
                            ctx.dataplane.shm)

    # The caller is the connection (a keep-alive client's requests come one after another).
    answer = await ctx.dataplane.infer(name, version, decode, request.scope.get("client"))
    t0 = time.perf_counter()
    parts, headers = encode_infer(name, answer.call, answer.outputs, answer.selected,
                                  answer.model.output_names)
    ctx.dataplane.done(answer, time.perf_counter() - t0)
    return PartsResponse(parts, headers)
