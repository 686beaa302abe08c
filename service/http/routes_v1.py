"""normserve's own routes (SPEC 4): inline normalisation, ONNX download, run-time registration,
the model list and the Prometheus metrics."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import numpy as np
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from normserve.kernels import prepare
from normserve.repository import (
    NAME_RULE,
    ModelError,
    build_layer,
    parse_config,
    valid_name,
)

from ..core.context import Context
from ..core.errors import InvalidInput, NotFound, PayloadTooLarge, ServiceUnavailable
from ..core.metrics import CONTENT_TYPE
from ..core.tensors import check_shape
from . import tags
from .body import json_body
from .codec import decode_tensor, tensor_json
from .request import ctx_of, require_admin
from .responses import OrjsonResponse
from .schemas import NormalizeRequest, RegisterRequest, Tensor, request_body, validate

router = APIRouter(default_response_class=OrjsonResponse, tags=[tags.V1])
RESERVED = {"device", "params", "input"}


def _params(ctx: Context, tensors: dict[str, Tensor], extra: int = 0) -> dict[str, np.ndarray]:
    """Decode parameter tensors, their element count (plus ``extra``) under the limit."""
    total = extra
    for key, t in tensors.items():
        total += check_shape(t.shape, ctx.limits, f"params.{key}.shape")
    if total > ctx.limits.max_tensor_elements:
        raise PayloadTooLarge(f"params: {total} elements in all are above the limit of "
                              f"{ctx.limits.max_tensor_elements}")
    return {k: decode_tensor(t, ctx.limits, f"params.{k}") for k, t in tensors.items()}


async def _run(ctx: Context, fn: Any, *args: Any) -> Any:
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(ctx.executor, fn, *args)
    try:
        return await asyncio.wait_for(fut, ctx.settings.request_timeout)
    except asyncio.TimeoutError:
        raise ServiceUnavailable(f"no result within {ctx.settings.request_timeout} s; "
                                 "retry later") from None


def _normalize(kind: str, params: dict, hyper: dict, x: np.ndarray, device: str) -> np.ndarray:
    try:
        layer = prepare(kind, params, device=device, **hyper)
        out_shape = layer.output_shape(x.shape)
    except (ValueError, TypeError, ArithmeticError) as exc:
        raise InvalidInput(f"layer: {exc}") from None
    if len(layer.input_names) != 1:
        raise InvalidInput(f"kind: {kind} takes the inputs {', '.join(layer.input_names)}; "
                           "/v1/normalize runs kinds of one input (serve this one as a model "
                           "and use POST /v2/models/{name}/infer)")
    x = np.ascontiguousarray(x)
    out = np.empty(out_shape, dtype=x.dtype)
    layer.apply(x, out=out)
    return out


@router.post("/v1/normalize", openapi_extra=request_body(NormalizeRequest))
async def normalize(request: Request) -> OrjsonResponse:
    ctx = ctx_of(request)
    req: NormalizeRequest = validate(NormalizeRequest, await json_body(request, ctx.settings))
    hyper = dict(req.model_extra or {})
    reserved = sorted(RESERVED & hyper.keys())
    if reserved:
        raise InvalidInput(f"{reserved[0]}: not a hyper-parameter")
    count = check_shape(req.input.shape, ctx.limits, "input.shape")
    params = _params(ctx, req.params, count)
    x = decode_tensor(req.input, ctx.limits, "input")
    if x.ndim < 1 or x.shape[0] < 1:
        raise InvalidInput("input.shape: needs a batch dimension >= 1")
    out = await _run(ctx, _normalize, req.kind, params, hyper, x, ctx.settings.device)
    return OrjsonResponse({"output": tensor_json(out)})


@router.get("/v1/models")
async def list_models(request: Request) -> dict:
    reg = ctx_of(request).registry
    return {"models": [{"name": m.name, "kind": m.config.kind, "ready": m.ready}
                       for m in reg.models.values()],
            "skipped": [{"name": k, "error": v} for k, v in reg.errors.items()]}


def _build(config: Any, params: dict, device: str, name: str) -> Any:
    layer = build_layer(config, params, device, f"model {name}")
    layer.warmup()
    return layer


@router.put("/v1/models/{name}", status_code=201, openapi_extra=request_body(RegisterRequest))
async def register(name: str, request: Request) -> OrjsonResponse:
    ctx = ctx_of(request)
    require_admin(request)
    if not valid_name(name):
        raise InvalidInput(f"name: must match {NAME_RULE}")
    req: RegisterRequest = validate(RegisterRequest, await json_body(request, ctx.settings))
    fields = req.model_dump(exclude={"params"}, exclude_none=True)
    fields.update(req.model_extra or {})
    try:
        config = parse_config(fields, "body")
    except ModelError as exc:
        raise InvalidInput(str(exc)) from None
    params = _params(ctx, req.params)
    try:
        layer = await _run(ctx, _build, config, params, ctx.settings.device, name)
    except ModelError as exc:
        raise InvalidInput(str(exc)) from None
    model, old, (synced, workers) = await ctx.registry.store.register(name, config, params,
                                                                         layer)
    return OrjsonResponse({"name": name, "replaced": old is not None,
                           "metadata": model.metadata(),
                           "workers": {"serving": synced, "of": workers}}, 200 if old else 201)


@router.delete("/v1/models/{name}")
async def unregister(name: str, request: Request) -> dict:
    ctx = ctx_of(request)
    require_admin(request)
    model = await ctx.registry.store.unregister(name)
    if model is not None:
        await model.batcher.close()
    return {"deleted": name}


@router.get("/v1/models/{name}/model.onnx", response_class=Response)
async def model_onnx(request: Request, name: str,
                     opset: int | None = Query(None, ge=1, le=64)) -> Response:
    ctx = ctx_of(request)
    model = ctx.registry.get(name)
    try:
        export = importlib.import_module("normserve.export")
    except ImportError:
        export = None
    if not hasattr(export, "to_onnx"):
        raise NotFound(f"model {name!r}: ONNX export is not available in this build")
    key = opset or 0
    data = model.onnx_cache.get(key)
    if data is None:
        def build() -> bytes:
            try:
                proto = export.to_onnx(model.layer, opset=opset)
            except (ValueError, TypeError, NotImplementedError) as exc:
                raise InvalidInput(f"opset: cannot export {name!r} ({exc})") from None
            return proto.SerializeToString()

        data = await asyncio.to_thread(build)
        model.onnx_cache[key] = data
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}.onnx"'})


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(ctx_of(request).metrics.render(), media_type=CONTENT_TYPE)
