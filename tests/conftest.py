"""Fixtures shared by the test folders, written once: the compute executor, the service's core
Context (Settings, registry, metrics) without a transport, the admin token, the demo and a
temporary model repository, and the app in this process (sync: Starlette's TestClient; async:
an ``httpx.AsyncClient`` over ``httpx.ASGITransport``), each with the app's lifespan run as
uvicorn runs it. Plain helpers (infer request builders, the oracle, ``in_process``,
``in_thread``, and ``running_server``: a real server process, for the tests where the process
is the point, tests/service/process) are in service_helpers.py."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_helpers import DEMO, InProcess, in_process

from normserve.service.app import create_app
from normserve.service.settings import Settings

ADMIN_TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def executor() -> Iterator[ThreadPoolExecutor]:
    """The one compute thread, as the server has it."""
    pool = ThreadPoolExecutor(1, thread_name_prefix="test-compute")
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture(scope="session")
def admin_token() -> str:
    return ADMIN_TOKEN


@pytest.fixture(scope="session")
def demo_repository() -> Path:
    """The demo repository shipped in the package (read-only: never write into it)."""
    return DEMO


@pytest.fixture
def model_repository(tmp_path: Path) -> Path:
    """An empty model repository of this test's own."""
    root = tmp_path / "models"
    root.mkdir()
    return root


@pytest.fixture
def make_context(executor: ThreadPoolExecutor) -> Callable[..., Any]:
    """The core as ``app.py`` builds it (repository loaded), without a transport."""
    from normserve.service.app import Context, Limits, Metrics, Registry

    def make(**fields: Any) -> Any:
        s = Settings(**{"warmup": False, **fields})
        registry = Registry(s, executor, Metrics())
        registry.load_repository()
        return Context(s, Limits(s.max_tensor_elements, s.max_rank), registry.metrics,
                       registry, executor)

    return make


@pytest.fixture
def app_factory() -> Iterator[Callable[..., InProcess]]:
    """``app_factory(**settings)``: the app in this process, ready, its lifespan entered
    (closed at the test's end); ``grpc=True`` starts its gRPC server on a free port."""
    with contextlib.ExitStack() as stack:
        yield lambda **settings: stack.enter_context(in_process(**settings))


@pytest.fixture
def app_client(app_factory: Callable[..., InProcess], admin_token: str) -> httpx.Client:
    """A TestClient on the demo repository's app (admin token set), lifespan run."""
    return app_factory(admin_token=admin_token).http


@pytest.fixture
async def async_app(admin_token: str) -> AsyncIterator[Any]:
    """The demo repository's app for async tests, its lifespan entered on the test's own
    event loop and its models ready: for ``httpx.ASGITransport``."""
    app = create_app(Settings(admin_token=admin_token, grpc_port=0))
    # The lifespan chains its drain-on-SIGTERM handlers to this (the main) thread's: put
    # pytest's back afterwards.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        async with app.router.lifespan_context(app.app), httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://testserver") as client:
            while (await client.get("/v2/health/ready")).status_code != 200:
                await asyncio.sleep(0.02)
            yield app
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


@pytest.fixture
async def async_app_client(async_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``async_app`` through ``httpx.AsyncClient(transport=ASGITransport(app))``."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(async_app),
                                 base_url="http://testserver") as client:
        yield client
