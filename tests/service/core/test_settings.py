"""Server settings reach what they configure, in-process: the command line's values and the
kernels' threaded-launch threshold the lifespan applies."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from normserve.kernels import cpu_jit
from normserve.service.app import create_app
from normserve.service.server import build_parser, settings_from
from normserve.service.settings import Settings


def _settings(*argv: str) -> Settings:
    return settings_from(build_parser().parse_args(list(argv)))


def test_parallel_min_work_from_the_command_line():
    assert _settings().parallel_min_work == 1 << 20
    assert _settings("--parallel-min-work", "4096").parallel_min_work == 4096
    for bad in ("0", "-1", "many"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--parallel-min-work", bad])


def test_lifespan_sets_the_kernels_threshold(monkeypatch):
    """Serving raises the threshold for the whole process (the library default stays lower)."""
    monkeypatch.setattr(cpu_jit, "_parallel_min_work", cpu_jit.PARALLEL_MIN_WORK)
    app = create_app(Settings(grpc_port=0, warmup=False, parallel_min_work=12345))

    async def serve_once() -> int:
        async with app.router.lifespan_context(app.app):
            return cpu_jit.parallel_min_work()

    # Off the main thread: the lifespan then leaves the process's signal handlers alone.
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(asyncio.run, serve_once()).result(60) == 12345
