"""Triton's ``GRPCInferenceService`` over ``DataPlane``: each RPC reads its message, asks the
data plane and writes its answer; a refusal becomes a gRPC status in one place (``_rpc``).

Not served, and answered as the HTTP transport answers them: CUDA shared memory (its status
is empty and unregistering succeeds with nothing to do; registering answers UNIMPLEMENTED)
and trace settings (UNIMPLEMENTED). Every RPC of the service is overridden here: the generated
base's would raise ``NotImplementedError`` and log a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from ..core.calls import InferCall
from ..core.dataplane import DataPlane
from ..core.errors import ApiError, ModelNotFound
from .codec import decode_request, encode_response, parameters
from .errors import status_code

log = logging.getLogger("normserve")
pb = service_pb2
R = TypeVar("R")
Handler = Callable[..., Awaitable[R]]


def _rpc(method: Handler) -> Handler:
    """Map the core's ``ApiError`` to the RPC's status; log anything else (a bug) and answer
    INTERNAL without details, as the HTTP transport answers 500."""

    @functools.wraps(method)
    async def wrapper(self: Servicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except ApiError as exc:
            await context.abort(status_code(exc), exc.message)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception as exc:
            log.exception("internal error in gRPC %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}")

    return wrapper


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key.lower() == "authorization":
            return value
    return None


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The RPCs of SPEC 7 on one data plane (the one the HTTP routes use)."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    # --- health and metadata ----------------------------------------------------------------
    @_rpc
    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=self.dp.ready() is None)

    @_rpc
    async def ModelReady(self, request, context):
        # A model not served (unknown, unloaded, or a version not served) is not ready, as
        # Triton answers it: tritonclient's is_model_ready() then returns False, not raises.
        try:
            return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name,
                                                                   request.version) is None)
        except ModelNotFound:
            return pb.ModelReadyResponse(ready=False)

    @_rpc
    async def ServerMetadata(self, request, context):
        meta = self.dp.server_metadata()
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"],
                                         extensions=meta["extensions"])

    @_rpc
    async def ModelMetadata(self, request, context):
        # The HTTP body, parsed into the message (its extra "parameters" has no field there).
        return json_format.ParseDict(self.dp.model_metadata(request.name, request.version),
                                     pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    @_rpc
    async def ModelConfig(self, request, context):
        config = json_format.ParseDict(self.dp.model_config(request.name, request.version),
                                       model_config_pb2.ModelConfig())
        return pb.ModelConfigResponse(config=config)

    @_rpc
    async def ModelStatistics(self, request, context):
        return json_format.ParseDict(self.dp.statistics(request.name, request.version),
                                     pb.ModelStatisticsResponse())

    # --- model repository and logging ---------------------------------------------------
    @_rpc
    async def RepositoryIndex(self, request, context):
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(**m)
            for m in self.dp.repository_index(request.ready, _authorization(context))])

    @_rpc
    async def RepositoryModelLoad(self, request, context):
        await self.dp.load(request.model_name, _authorization(context),
                           parameters(request.parameters))
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request, context):
        await self.dp.unload(request.model_name, _authorization(context))
        return pb.RepositoryModelUnloadResponse()

    @_rpc
    async def LogSettings(self, request, context):
        if request.settings:
            changes = {k: getattr(v, v.WhichOneof("parameter_choice"))
                       for k, v in request.settings.items() if v.WhichOneof("parameter_choice")}
            self.dp.logs.update(changes)
        value = pb.LogSettingsResponse.SettingValue
        settings = {k: value(bool_param=v) if isinstance(v, bool)
                    else value(uint32_param=v) if isinstance(v, int) else value(string_param=v)
                    for k, v in self.dp.logs.get().items()}
        return pb.LogSettingsResponse(settings=settings)

    # --- system shared memory -----------------------------------------------------------
    @_rpc
    async def SystemSharedMemoryRegister(self, request, context):
        self.dp.shm.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    @_rpc
    async def SystemSharedMemoryUnregister(self, request, context):
        self.dp.shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    @_rpc
    async def SystemSharedMemoryStatus(self, request, context):
        status = pb.SystemSharedMemoryStatusResponse
        return status(regions={r["name"]: status.RegionStatus(**r)
                               for r in self.dp.shm.status(request.name)})

    # --- CUDA shared memory and trace settings: not served ------------------------------
    @_rpc
    async def CudaSharedMemoryRegister(self, request, context):
        self.dp.cuda_shm.register(request.name)
        return pb.CudaSharedMemoryRegisterResponse()

    @_rpc
    async def CudaSharedMemoryUnregister(self, request, context):
        self.dp.cuda_shm.unregister(request.name)
        return pb.CudaSharedMemoryUnregisterResponse()

    @_rpc
    async def CudaSharedMemoryStatus(self, request, context):
        status = pb.CudaSharedMemoryStatusResponse
        return status(regions={r["name"]: status.RegionStatus(**r)
                               for r in self.dp.cuda_shm.status(request.name)})

    @_rpc
    async def TraceSetting(self, request, context):
        self.dp.trace_settings(request.model_name)
        return pb.TraceSettingResponse()

    # --- inference ----------------------------------------------------------------------
    async def _infer(self, request: pb.ModelInferRequest, peer: str,
                     response: pb.ModelInferResponse | None = None) -> pb.ModelInferResponse:
        """Run one request; its answer fills ``response`` when given (else a new message)."""
        async def decode() -> InferCall:
            return decode_request(request, self.dp.ctx.limits, self.dp.shm)

        answer = await self.dp.infer(request.model_name, request.model_version or None, decode,
                                     peer)
        t0 = time.perf_counter()
        response = encode_response(answer.model.name, answer.call, answer.outputs,
                                   answer.selected, answer.model.output_names, response)
        self.dp.done(answer, time.perf_counter() - t0)
        return response

    @_rpc
    async def ModelInfer(self, request, context):
        return await self._infer(request, context.peer())

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[pb.ModelInferRequest],
                               context: grpc.aio.ServicerContext) -> None:
        """Requests of a stream run concurrently (they batch with each other and with every
        other client); each answer, or its error, is written by its own request's task as
        soon as it is ready (one write in flight at a time: gRPC's rule), with the
        request's ``id`` to match them. An error ends nothing but its own request."""
        peer = context.peer()
        writing = asyncio.Lock()
        running: set[asyncio.Task] = set()

        async def one(request: pb.ModelInferRequest) -> None:
            reply = pb.ModelStreamInferResponse()
            try:
                await self._infer(request, peer, reply.infer_response)
            except ApiError as exc:
                reply = pb.ModelStreamInferResponse(
                    error_message=exc.message,
                    infer_response=pb.ModelInferResponse(id=request.id,
                                                         model_name=request.model_name))
            except Exception as exc:  # a bug: this request fails, the stream goes on
                log.exception("internal error in gRPC ModelStreamInfer")
                reply = pb.ModelStreamInferResponse(
                    error_message=f"internal error: {type(exc).__name__}")
            async with writing:
                try:
                    await context.write(reply)
                except Exception as exc:  # the stream ended under it: the client left
                    log.debug("gRPC ModelStreamInfer: an answer not sent (%s)", exc)

        try:
            async for request in request_iterator:
                task = asyncio.create_task(one(request))
                running.add(task)
                task.add_done_callback(running.discard)
            if running:
                await asyncio.gather(*running)
        finally:  # the client went away, or the stream ended: nothing is left running
            for task in list(running):
                task.cancel()
