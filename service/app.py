"""The app factory: routes, error handlers, and the lifespan that loads, warms and drains.

Start-up loads the repository (broken models are skipped), starts one batcher per model and
the gRPC server on this event loop, and compiles the kernels in the background:
``/v2/health/ready``, gRPC ServerReady and the gRPC health service turn true when that is done.
Shutdown (uvicorn's SIGTERM handling has already stopped accepting HTTP and let running HTTP
requests finish) stops gRPC the same way, then closes every batcher, which runs whatever is
still queued before it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

import numba
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from numba.core import event as numba_event

from normserve.kernels.cpu_jit import set_parallel_min_work

from . import __version__
from .core.context import Context
from .core.metrics import Metrics
from .core.tensors import Limits
from .http import errors, routes_v1, routes_v2
from .http.fastpath import InferFastPath
from .http.responses import OrjsonResponse
from .http.tags import OPENAPI_TAGS
from .models.registry import Registry
from .settings import LOG_FORMAT, Settings

if TYPE_CHECKING:
    from .grpc.server import GrpcServer

log = logging.getLogger("normserve")

#: The young generation's collection threshold once the server is warm (Python's: 700).
YOUNG_GC_OBJECTS = 10_000


def create_app(settings: Settings | None = None) -> InferFastPath:
    """A ready-to-serve app for these settings (read from the environment when None)."""
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = await _start(settings, app)
        try:
            yield
        finally:
            await _stop(running)

    # /docs (Swagger UI) loads its script and styles from fastapi-offline's package data,
    # mounted at /static-offline-docs, not from a CDN: it works air-gapped. validatorUrl None:
    # Swagger UI's default validator badge is an image from swagger.io. No /redoc: ReDoc's
    # bundle loads its logo from cdn.redoc.ly whatever the page says.
    app = FastAPIOffline(title="normserve", version=__version__, lifespan=lifespan,
                         default_response_class=OrjsonResponse, redoc_url=None,
                         swagger_ui_parameters={"validatorUrl": None},
                         openapi_tags=OPENAPI_TAGS,
                         description="Normalisation layers over the Open Inference Protocol "
                                     "(KServe v2), with dynamic batching.")
    errors.install(app)
    app.include_router(routes_v2.router)
    app.include_router(routes_v1.router)
    return InferFastPath(app)


@dataclass
class _Running:
    """What start-up made and shutdown takes down."""

    ctx: Context
    grpc_server: GrpcServer | None
    background: list[asyncio.Task]


async def _start(settings: Settings, app: FastAPI) -> _Running:
    """Load the repository, start every batcher and the gRPC server, and in the background
    warm the kernels (and, as the settings say, poll the repository, follow the other
    workers)."""
    set_parallel_min_work(settings.parallel_min_work)
    executor = ThreadPoolExecutor(1, thread_name_prefix="normserve-compute")
    metrics = Metrics()
    registry = Registry(settings, executor, metrics)
    registry.load_repository()
    ctx = Context(settings, Limits(settings.max_tensor_elements, settings.max_rank),
                  metrics, registry, executor)
    app.state.ctx = ctx
    for model in registry.models.values():
        model.batcher.start()
    grpc_server = None
    if settings.grpc_port:
        from .grpc.server import GrpcServer  # gRPC's import costs nothing when off

        grpc_server = GrpcServer(ctx.dataplane, settings.host, settings.grpc_port)
        await grpc_server.start()
    log.info("serving %d model(s) from %s; %d skipped%s", len(registry.models),
             registry.root, len(registry.errors),
             f"; gRPC on port {grpc_server.port}" if grpc_server else "")
    background = [asyncio.create_task(_warm_all(registry, grpc_server))]
    if settings.model_control_mode == "poll":
        background.append(asyncio.create_task(registry.control.poll_forever()))
    if registry.cluster.active:  # several workers: follow the others' changes
        registry.cluster.report(applied=registry.cluster.generation())
        background.append(asyncio.create_task(registry.control.follow_forever()))
    _on_stop_signals(ctx, grpc_server)
    return _Running(ctx, grpc_server, background)


async def _stop(running: _Running) -> None:
    """Stop the background tasks, leave the workers' sums, let gRPC's running calls finish,
    then close every batcher (which runs what is still queued) and the compute thread."""
    ctx = running.ctx
    ctx.draining = True
    for task in running.background:
        task.cancel()
    ctx.registry.cluster.leave()
    ctx.metrics.leave()
    if running.grpc_server is not None:
        await running.grpc_server.stop(ctx.settings.request_timeout)
    for model in list(ctx.registry.models.values()):
        await model.batcher.close()
    ctx.executor.shutdown(wait=True)


def _on_stop_signals(ctx: Context, grpc_server: GrpcServer | None) -> None:
    """On SIGTERM/SIGINT: report not-ready (HTTP, gRPC and its health service) and run queued
    requests at once, then let uvicorn go on with its graceful shutdown (its handler is
    chained, not replaced)."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task] = set()  # referenced until done (the loop keeps weak ones)

    def drain() -> None:
        ctx.draining = True
        ctx.registry.cluster.report(ready=False)
        for model in list(ctx.registry.models.values()):
            model.batcher.flush()
        if grpc_server is not None:
            task = loop.create_task(grpc_server.drain())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(drain)
            if callable(previous):
                previous(signum, frame)

        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (an embedding app): uvicorn's own handling only
            return


class _Compiles(numba_event.Listener):
    """Counts the kernels Numba compiles (cache misses; what its cache holds loads without an
    event) and, at the first, says what is going on: a first start compiles for seconds."""

    def __init__(self) -> None:
        self.kernels = 0
        self.cached_in: set[str] = set()
        self._depth = 0  # a kernel's helpers compile inside its own event
        self._lock = threading.Lock()

    def on_start(self, event: numba_event.Event) -> None:
        with self._lock:
            self._depth += 1
            if self._depth > 1:
                return
            self.kernels += 1
            path = event.data["dispatcher"].stats.cache_path
            if path:
                path = numba.config.CACHE_DIR or path  # NUMBA_CACHE_DIR, else by the sources
                self.cached_in.add(str(path))
            if self.kernels == 1:
                log.info("compiling kernels (once: Numba caches them%s, and later starts load "
                         "them in about a second)...", f" in {path}" if path else "")

    def on_end(self, event: numba_event.Event) -> None:
        with self._lock:
            self._depth -= 1


async def _warm_all(registry: Registry, grpc_server: GrpcServer | None) -> None:
    compiles = _Compiles()
    start = time.perf_counter()
    with numba_event.install_listener("numba:compile", compiles):
        for model in list(registry.models.values()):
            try:
                await registry.warm(model)
            except Exception:  # a model that cannot run is reported, and the others still warm
                log.exception("warm-up of %s failed", model.name)
    if registry.settings.warmup:
        if not compiles.kernels:
            how = "every kernel loaded from Numba's cache"
        elif compiles.cached_in:
            how = (f"{compiles.kernels} kernel(s) compiled, cached for the next start in "
                   f"{os.path.commonpath(sorted(compiles.cached_in))}")
        else:
            how = f"{compiles.kernels} kernel(s) compiled, not cached (no writable cache directory)"
        log.info("warm-up: %d model(s) in %.1f s; %s", len(registry.models),
                 time.perf_counter() - start, how)
    registry.cluster.report(ready=registry.ready)
    # What start-up made (modules, compiled kernels, models) lives as long as the process:
    # out of the collector's sight, full collections stop walking it. They paused the event
    # loop long enough to set the tail latency (bench-results/notes.md).
    gc.collect()
    gc.freeze()
    # Young collections every YOUNG_GC_OBJECTS net new containers, not Python's 700: with
    # 128 requests in flight, thousands of their objects are young at any time and each
    # collection walked them all (bench-results/notes.md).
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GC_OBJECTS, older, oldest)
    if grpc_server is not None and registry.ready:
        await grpc_server.set_serving(True)


def create_app_from_env() -> InferFastPath:
    """uvicorn's factory for ``--workers N``: settings come through the environment."""
    settings = Settings.from_env()
    if not logging.getLogger().handlers:
        # A spawned worker: the CLI's logging set-up stays in its process; without this the
        # workers' info lines (what they serve, the warm-up) would not be seen.
        logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
    return create_app(settings)
