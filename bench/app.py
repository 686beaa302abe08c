"""The inference app's own CPU per request, without sockets (``python -m
normserve.bench.app``).

``loadbench`` measures whole servers, and its numbers swing with everything else on the machine
(the load generator shares the cores). This drives the ASGI app that uvicorn runs directly:
the lifespan starts it (repository, batchers, warm-up), then ``--clients`` concurrent callers
send the same ``POST /v2/models/{model}/infer`` through its ``receive``/``send`` for
``--duration`` seconds, ``--repeat`` times. The figure is the process's CPU time per request:
what normserve itself costs (decoding, batching, the kernel, metrics, encoding), apart from
uvicorn's HTTP parsing and the socket writes, which a bare ASGI echo in loadbench measures.

``--modes grpc`` does the same for gRPC: each caller hands the servicer's ``ModelInfer`` a
request parsed from its wire bytes and serialises the answer, as grpc.aio would around it,
without grpc.aio's own per-call cost (which a bare ``grpc.aio`` echo in loadbench measures).
Beside it, "grpc echo handler" runs the echo's handler (``load.grpc_echo_reply``) the same way:
what a handler that only answers costs, so the difference is normserve's own Python per call.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from normserve.service.app import create_app
from normserve.service.http.connections import BODY_DEADLINE
from normserve.service.settings import Settings

from .load import MODES, PAYLOADS, _install_uvloop, grpc_echo_reply, infer_body, sample
from .load_peers import MODEL

APP_MODES = ("http-binary", "http-json", "grpc")
GRPC_ECHO = "grpc echo handler"


@dataclass
class Result:
    mode: str
    payload: str
    clients: int
    rps: float
    cpu_us: float  # process CPU time per request
    failed: int  # answers other than 200


async def _start(app: Callable) -> tuple[asyncio.Queue, asyncio.Task]:
    """Run the app's lifespan up to "started" and wait until its models are warm."""
    messages: asyncio.Queue = asyncio.Queue()
    started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                   messages.get, send))
    await messages.put({"type": "lifespan.startup"})
    await started.wait()
    while not app.state.ctx.registry.ready:
        await asyncio.sleep(0.05)
    return messages, task


async def _measure(app: Callable, mode: str, payload: str, clients: int,
                   duration: float) -> Result:
    body, headers = infer_body(PAYLOADS[payload], mode.removeprefix("http-"))
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw += [(b"content-length", str(len(body)).encode()), (b"host", b"appbench")]
    path = f"/v2/models/{MODEL}/infer"

    def caller(port: int) -> Callable[[], Awaitable[bool]]:
        async def call() -> bool:
            # As normserve's own connections (connections.py) present a request.
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                     "method": "POST", "scheme": "http", "path": path,
                     "raw_path": path.encode(), "query_string": b"", "root_path": "",
                     "headers": raw, "client": ("127.0.0.1", port), "server": ("127.0.0.1", 2),
                     "extensions": {BODY_DEADLINE: {}}}
            messages = iter([{"type": "http.request", "body": body, "more_body": False}])
            status: list[int] = []

            async def receive() -> dict[str, Any]:
                return next(messages, {"type": "http.disconnect"})

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])

            await app(scope, receive, send)
            return status == [200]
        return call

    return await _drive(caller, mode, payload, clients, duration)


async def _drive(caller: Callable[[int], Callable[[], Awaitable[bool]]], mode: str,
                 payload: str, clients: int, duration: float) -> Result:
    """``clients`` callers, each a connection of its own (the batcher tells callers apart by
    it: caller ``i`` is port 10000 + i), each calling its ``caller(port)`` (True: a good
    answer) until ``duration`` is over; the process's CPU time per call. Each call first
    gives the event loop a turn, as its trip over a network would: a lone caller's request
    runs in its own task without waiting for anything, so without it the first caller would
    make every call before the others start, and several callers would measure one."""
    done = failed = 0

    async def run(until: float, call: Callable[[], Awaitable[bool]]) -> None:
        nonlocal done, failed
        while time.perf_counter() < until:
            await asyncio.sleep(0)
            ok = await call()
            done += 1
            failed += not ok

    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(run(start + duration, caller(10000 + i)) for i in range(clients)))
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return Result(mode, payload, clients, done / wall, cpu / max(done, 1) * 1e6, failed)


class _Caller:
    """What ``ModelInfer`` asks of its ``grpc.aio`` context: the caller's address (a caller is
    a connection of its own, as in ``_measure``), and an abort, which fails the run."""

    def __init__(self, port: int) -> None:
        self._peer = f"ipv4:127.0.0.1:{port}"

    def peer(self) -> str:
        return self._peer

    async def abort(self, code: Any, details: str) -> None:
        raise RuntimeError(f"ModelInfer answered {code}: {details}")


async def _measure_grpc(app: Callable, mode: str, payload: str, clients: int,
                        duration: float) -> Result:
    from tritonclient.grpc import service_pb2

    from normserve.service.grpc.servicer import Servicer

    shape = PAYLOADS[payload]
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    request.raw_input_contents.append(sample(shape).tobytes())
    wire = request.SerializeToString()
    if mode == GRPC_ECHO:
        async def handler(request: Any, context: _Caller) -> Any:
            return grpc_echo_reply(request)
    else:
        handler = Servicer(app.state.ctx.dataplane).ModelInfer
    tensor_bytes = len(request.raw_input_contents[0])

    def caller(port: int) -> Callable[[], Awaitable[bool]]:
        context = _Caller(port)

        async def call() -> bool:
            reply = await handler(service_pb2.ModelInferRequest.FromString(wire), context)
            return len(reply.SerializeToString()) >= tensor_bytes
        return call

    return await _drive(caller, mode, payload, clients, duration)


async def run(args: argparse.Namespace) -> list[Result]:
    app = create_app(Settings(grpc_port=0))
    messages, lifespan = await _start(app)
    results = []
    try:
        modes = [m for mode in args.modes for m in ((mode, GRPC_ECHO) if mode == "grpc"
                                                    else (mode,))]
        for mode in modes:
            measure = _measure_grpc if mode in ("grpc", GRPC_ECHO) else _measure
            for payload in args.payloads:
                await measure(app, mode, payload, args.clients, min(args.duration, 0.5))
                for _ in range(args.repeat):
                    result = await measure(app, mode, payload, args.clients, args.duration)
                    results.append(result)
                    print(f"{MODES.get(mode, mode)} {payload}, {result.clients} callers: "
                          f"{result.rps:.0f} req/s, {result.cpu_us:.1f} us CPU per request, "
                          f"{result.failed} failed", flush=True)
    finally:
        await messages.put({"type": "lifespan.shutdown"})
        await lifespan
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m normserve.bench.app",
                                description=__doc__.split("\n\n")[1])
    p.add_argument("--modes", nargs="+", choices=APP_MODES, default=list(APP_MODES))
    p.add_argument("--payloads", nargs="+", choices=list(PAYLOADS), default=["1x1024"])
    p.add_argument("--clients", type=int, default=32, help="concurrent callers (default 32)")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per repeat")
    p.add_argument("--repeat", type=int, default=3)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _install_uvloop()  # the event loop the server runs
    results = asyncio.run(run(args))
    return 1 if any(r.failed for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
