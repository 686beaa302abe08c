"""The protocol-neutral core of the service: what the HTTP and gRPC transports both do.

As MLServer's ``DataPlane`` serves its REST and gRPC packages, this class answers health,
metadata, configuration, statistics and inference for both transports from the same
registry, batchers, limits and metrics, so an HTTP and a gRPC request can share a batch.
Errors are raised here once, as the named ``ApiError`` classes of ``core.errors``, and each
transport maps them once: ``http.errors`` for HTTP, ``grpc.errors`` for gRPC. Transports
decode a request into one ``InferCall`` and encode the answer; everything between is here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import orjson

from normserve.kernels.dtypes import datatype_name

from .. import __version__
from ..batching.batcher import Closed, QueueFull, Timing
from ..extensions.log_settings import LogSettings
from ..extensions.model_config import triton_config
from ..extensions.shared_memory import CudaSharedMemory, SharedMemory
from ..extensions.statistics import model_statistics
from ..models.model import Model
from .admin import check_admin
from .calls import InferCall
from .errors import ApiError, InvalidInput, ModelNotFound, ServiceUnavailable, Unsupported
from .protocol import EXTENSIONS, VERSION
from .tensors import Selected


@dataclass
class Answer:
    """A finished inference: what the transport encodes, and what ``done`` records.

    ``outputs`` holds every output of the model (in its ``output_names`` order); the answer
    carries the ``selected`` ones (those the request named, or all: ``Model.select``)."""

    model: Model
    call: InferCall
    outputs: tuple[np.ndarray, ...]
    timing: Timing
    start: float
    decode_s: float
    selected: Selected

    @property
    def output(self) -> np.ndarray:
        """The first output answered (a model of one output: its output)."""
        return self.outputs[self.selected[0][0]]


class DataPlane:
    """Everything a v2 request asks of the server, whatever carried it."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx  # context.Context: settings, limits, metrics, registry, executor
        self.logs = LogSettings()
        self.shm = SharedMemory(ctx.settings.allow_shared_memory)
        self.cuda_shm = CudaSharedMemory()

    # --- health and metadata ----------------------------------------------------------------
    def ready(self) -> str | None:
        """None when the server is ready, else why not (draining, warming up)."""
        if self.ctx.draining:
            return "server is shutting down"
        models = self.ctx.registry.models.values()
        if not all(m.ready for m in models):
            warm = sum(m.ready for m in models)
            return f"warming up: {warm} of {len(models)} models compiled"
        if not self.ctx.registry.cluster.all_ready():
            return f"waiting for every worker ({self.ctx.settings.workers}) to be ready"
        return None

    def server_metadata(self) -> dict[str, Any]:
        shm = ["system_shared_memory"] if self.shm.allowed else []
        return {"name": "normserve", "version": __version__, "extensions": EXTENSIONS + shm}

    def model(self, name: str, version: str | None = None) -> Model:
        """The served model ``name``, or a 404 (unknown model, or a version not served)."""
        model = self.ctx.registry.get(name)
        if version not in (None, "", VERSION):
            raise ModelNotFound(f"model {name!r}: unknown version {version!r} (only "
                                f"{VERSION!r})")
        return model

    def model_ready(self, name: str, version: str | None = None) -> str | None:
        """None when the model is ready, else why not; a 404 for an unknown model."""
        return None if self.model(name, version).ready else f"model {name!r}: warming up"

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        return self.model(name, version).metadata()

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        return triton_config(self.model(name, version))

    def statistics(self, name: str | None = None, version: str | None = None
                   ) -> dict[str, Any]:
        """Triton's statistics body: every model, or one (a 404 when unknown)."""
        names = [self.model(name, version).name] if name else list(self.ctx.registry.models)
        return {"model_stats": model_statistics(self.ctx.metrics, names)}

    def repository_index(self, ready_only: bool, authorization: str | None
                         ) -> list[dict[str, Any]]:
        """The repository's models as Triton lists them: every folder, served or not (and
        why not). Admin only (SPEC 8): it names folders that are not served."""
        check_admin(authorization, self.ctx.settings)
        index = self.ctx.registry.index()
        return [m for m in index if m["state"] == "READY"] if ready_only else index

    async def load(self, name: str, authorization: str | None,
                   parameters: dict[str, Any] | None = None) -> None:
        """Triton's RepositoryModelLoad: admin only, in model control mode ``explicit``;
        ``parameters.config`` (a JSON config.json) replaces the folder's config, durably."""
        self._check_control(authorization, "load", name)
        config = (parameters or {}).get("config")
        if config is not None:
            try:
                config = orjson.loads(config) if isinstance(config, (str, bytes)) else None
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"parameters.config: not valid JSON ({exc})") from None
            if not isinstance(config, dict):
                raise InvalidInput("parameters.config: must be a JSON object (a config.json) "
                                   "given as a string")
        await self.ctx.registry.control.load(name, config)

    async def unload(self, name: str, authorization: str | None) -> None:
        """Triton's RepositoryModelUnload: admin only, in model control mode ``explicit``."""
        self._check_control(authorization, "unload", name)
        await self.ctx.registry.control.unload(name)

    def check_admin(self, authorization: str | None) -> None:
        check_admin(authorization, self.ctx.settings)

    def _check_control(self, authorization: str | None, action: str, name: str) -> None:
        check_admin(authorization, self.ctx.settings)
        mode = self.ctx.settings.model_control_mode
        if mode != "explicit":
            raise InvalidInput(f"model {name!r}: cannot {action}: explicit model load / "
                               f"unload is not allowed in model control mode {mode!r} "
                               "(start with --model-control-mode explicit)")

    def trace_settings(self, model: str | None = None) -> NoReturn:
        """Triton's trace extension, not served: refused as Triton refuses a feature it was
        built without (501 / UNIMPLEMENTED)."""
        raise Unsupported("trace settings are not supported by this server (Triton's trace "
                          "extension); use the statistics, /metrics and logging extensions")

    # --- inference --------------------------------------------------------------------------
    async def infer(self, name: str, version: str | None,
                    decode: Callable[[], Awaitable[InferCall]],
                    caller: Hashable | None = None) -> Answer:
        """Decode (the transport's ``decode``), check, queue for a batch: the hot path.
        ``caller``: the client's connection, as the transport knows it (the batcher's
        adaptive wait keeps a batch open for a caller about to come back).

        Every refusal after the model is found counts as a failure of that model, in the
        metrics and the statistics, whichever transport it came by.
        """
        start = time.perf_counter()
        model = self.model(name, version)
        try:
            call = await decode()
            decode_s = time.perf_counter() - start
            _check_names(call, name, version)
            inputs, selected, targets = _bind(model, call)
            settings = self.ctx.settings
            timeout = min(call.timeout_s or settings.request_timeout, settings.request_timeout)
            outs, timing, model, selected = await self._submit(
                model, call, timeout, inputs, selected, targets, caller)
        except (QueueFull, asyncio.TimeoutError, Closed) as exc:
            error = _refusal(exc, name, model, timeout)
            self.ctx.metrics.observe_failure(name, error.reason, time.perf_counter() - start)
            raise error from None
        except ApiError as exc:
            self.ctx.metrics.observe_failure(name, exc.reason or "BAD_REQUEST",
                                             time.perf_counter() - start)
            raise
        return Answer(model, call, outs, timing, start, decode_s, selected)

    async def _submit(self, model: Model, call: InferCall, timeout: float,
                      inputs: tuple[np.ndarray, ...], selected: Selected,
                      targets: tuple[np.ndarray | None, ...] | None, caller: Hashable | None
                      ) -> tuple[tuple[np.ndarray, ...], Timing, Model, Selected]:
        """The call's rows of every output from ``model``'s batcher (and the model and
        outputs they are of); one replaced while this request was on its way to the old
        batcher (which finishes what it had queued) hands it to the new version, warm
        already."""
        try:
            outs, timing = await model.batcher.submit(inputs, timeout, targets, caller)
            return outs, timing, model, selected
        except Closed:
            current = self.ctx.registry.models.get(model.name)
            if current is None or current is model or self.ctx.draining:
                raise
            inputs, selected, targets = _bind(current, call)
            outs, timing = await current.batcher.submit(inputs, timeout, targets, caller)
            return outs, timing, current, selected

    def done(self, answer: Answer, encode_s: float) -> None:
        """Record an answered request (after the transport encoded it)."""
        t = answer.timing
        self.ctx.metrics.observe_success(answer.model.name, time.perf_counter() - answer.start,
                                         t.queue_s, answer.decode_s, t.compute_s, encode_s)


def _refusal(exc: Exception, name: str, model: Model, timeout: float) -> ApiError:
    """The answer to a request the batcher did not run (503s the client may retry)."""
    if isinstance(exc, QueueFull):
        return ServiceUnavailable(f"model {name!r}: queue is full "
                                  f"({model.batcher.max_queue_size} requests); retry later",
                                  reason="REJECTED")
    if isinstance(exc, asyncio.TimeoutError):
        return ServiceUnavailable(f"model {name!r}: no result within {timeout:g} s (the "
                                  "request timeout); retry later", reason="TIMEOUT")
    return ServiceUnavailable(f"model {name!r}: is being removed or the server is shutting "
                              "down", reason="UNAVAILABLE")


def _bind(model: Model, call: InferCall
          ) -> tuple[tuple[np.ndarray, ...], Selected, tuple[np.ndarray | None, ...] | None]:
    """The call's inputs in the model's order, the outputs to answer with, and the arrays
    over the client's shared-memory regions the batch writes outputs into (None: no
    output goes to shared memory); a 400 naming the input or output at fault."""
    inputs = model.bind(call)
    selected = model.select(call)
    if call.output_region is None and call.outputs is None:
        return inputs, selected, None  # the common case: nothing more to look at
    targets: list[np.ndarray | None] | None = None
    for index, spec in selected:
        region = spec.region if spec is not None else \
            call.output_region if index == 0 else None
        if region is None:
            continue
        if targets is None:
            targets = [None] * len(model.output_names)
        field = "outputs[0]" if spec is None else spec.field
        targets[index] = _region_array(model, inputs[0], region, field, model.output_names[index])
    return inputs, selected, None if targets is None else tuple(targets)


def _region_array(model: Model, x: np.ndarray, region: memoryview, field: str,
                  name: str) -> np.ndarray:
    """The array over a client's shared-memory output region that the batch writes this
    request's rows of output ``name`` into (a 400 when the region is too small)."""
    shape = model.layer.output_shape(x.shape)
    dtype = x.dtype
    need = math.prod(shape) * dtype.itemsize
    if len(region) < need:
        raise InvalidInput(f"{field}.parameters.shared_memory_byte_size: "
                           f"{len(region)} bytes, but the output {name!r} {list(shape)} of "
                           f"{datatype_name(dtype)} needs {need}")
    return np.frombuffer(region, dtype, math.prod(shape)).reshape(shape)


def _check_names(call: InferCall, name: str, version: str | None) -> None:
    """The ``model_name``/``model_version`` a client put in the body (kserve's clients do)
    must agree with the model addressed."""
    if call.model_name is not None and call.model_name != name:
        raise InvalidInput(f"model_name: the body names {call.model_name!r} but the request "
                           f"is for {name!r}")
    if call.model_version not in (None, "", version or VERSION):
        raise InvalidInput(f"model_version: the body names {call.model_version!r} but the "
                           f"request is for version {version or VERSION!r}")
