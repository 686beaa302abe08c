"""Load benchmark of the service (``python -m normserve.bench.load``): req/s, p50, p99
and the mean batch size actually formed, for normserve next to echoes of the same bytes: a bare
FastAPI endpoint (the framework's ceiling), a bare ASGI app on uvicorn (the HTTP server's
ceiling) and a bare ``grpc.aio`` servicer (the gRPC ceiling).

The load generators run in their own process, so the numbers are not those of a Python client
library: a small asyncio HTTP/1.1 client (keep-alive, one connection per client), and a
``grpc.aio`` client (one channel, so one HTTP/2 connection, per client) calling the raw
``GRPCInferenceService`` stub with a prebuilt ``ModelInferRequest``. The matrix of the issue:
clients 1, 8, 32, 128; one 1x1024 FP32 row and one 64x1024 block (layer norm); batching on and
off; 1 and 2 workers; and the modes (``--modes``): v2 binary and v2 JSON over HTTP, v2 over
gRPC, and system shared memory over gRPC and over HTTP (each client registers its own input and
output regions and sends only their names; one worker only, as the server requires; every
output region is checked afterwards), and the same over Triton's own C++ load generator,
``perf_analyzer`` (the ``pa-*`` modes, ``bench/perf_analyzer.py``: HTTP, gRPC, gRPC streaming
and system shared memory; the gRPC ones against the ``grpc.aio`` echo too, whose cost then no
longer hides behind a Python client's). ``--peers triton kserve mlserver`` adds real peers
(``loadbench_peers``: Triton through nvidia-pytriton, KServe's ModelServer, MLServer), each
driven by the same generators in the modes it serves, after its answer to each mode's request is
checked against NumPy; a peer that is missing, does not start or answers wrongly is skipped,
saying why. Every server of a run is started first and stays up; each cell (payload, mode,
clients) is then measured on each server in turn, so that a drift of the machine's speed moves
all the servers of a cell alike. Beside req/s, each cell has the server's CPU time per answer
(all its processes, read by the generator over the measured seconds): what a request costs
the server, steadier than req/s on a machine whose speed varies; and the generator's own CPU
per answer: it shares the cores, so a throughput target not met says what it would leave
the server. Results are written as a markdown table, followed by the targets of the issue
checked on the cells run, against normserve's own HTTP and the best peer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

from . import perf_analyzer as pa
from .extra import require
from .load_peers import MODEL, PEERS, PeerMissing, installed, reference, write_params
from .machine import describe

PAYLOADS = {"1x1024": (1, 1024), "64x1024": (64, 1024)}
#: mode -> the protocol column of the table (the HTTP labels are the ones of earlier runs).
MODES = {"http-binary": "v2 binary", "http-json": "v2 json", "grpc": "v2 grpc",
         "shm-grpc": "shm grpc", "shm-http": "shm http",
         **pa.MODES}  # perf_analyzer's (bench/perf_analyzer.py): pa-http, pa-grpc, ...
SHM_MODES = ("shm-grpc", "shm-http", "pa-shm")
ECHO = "echo"  # the mode the HTTP echoes are driven with: v2 binary's bytes, echoed
QUICK_MODES = ["http-binary", "grpc", "shm-grpc", "shm-http"]
#: gRPC messages up to the server's default --max-body-bytes (a 64x1024 FP32 block is 256 KiB).
GRPC_LIMIT = 64 * 1024 * 1024


def _echo_app() -> FastAPI:
    """The framework's ceiling: a bare FastAPI endpoint that returns the posted bytes."""
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    return app


async def _asgi_echo(scope: dict, receive: Callable, send: Callable) -> None:
    """The HTTP server's own ceiling: uvicorn with no framework at all, the posted bytes
    returned (normserve's inference path is raw ASGI too; see service/fastpath.py)."""
    if scope["type"] != "http":
        return  # uvicorn runs it with --lifespan off
    chunks, more = [], True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    body = b"".join(chunks)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# --- request bodies ---
def sample(shape: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def build_request(path: str, body: bytes, headers: dict[str, str], port: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode() + body


def infer_body(shape: tuple[int, int], protocol: str, input_name: str = "x"
               ) -> tuple[bytes, dict[str, str]]:
    """An HTTP v2 body. normserve takes its one input under any name (the earlier runs sent
    "x"); the peers want the declared name "input"."""
    x = sample(shape)
    if protocol == "json":
        body = orjson.dumps({"inputs": [{"name": input_name, "shape": list(shape),
                                         "datatype": "FP32", "data": x.ravel().tolist()}]})
        return body, {"Content-Type": "application/json"}
    raw = x.tobytes()
    head = orjson.dumps({"inputs": [{"name": input_name, "shape": list(shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}})
    return head + raw, {"Inference-Header-Content-Length": str(len(head)),
                        "Content-Type": "application/octet-stream"}


def shm_body(shape: tuple[int, int], in_region: str, out_region: str, nbytes: int
             ) -> tuple[bytes, dict[str, str]]:
    """An HTTP JSON body naming shared-memory regions instead of carrying data."""
    body = orjson.dumps({
        "inputs": [{"name": "input", "shape": list(shape), "datatype": "FP32",
                    "parameters": {"shared_memory_region": in_region,
                                   "shared_memory_byte_size": nbytes}}],
        "outputs": [{"name": "output", "parameters": {"shared_memory_region": out_region,
                                                      "shared_memory_byte_size": nbytes}}]})
    return body, {"Content-Type": "application/json"}


def grpc_request(shape: tuple[int, int], regions: tuple[str, str] | None = None) -> bytes:
    """A serialized ``ModelInferRequest``: the data in ``raw_input_contents``, or, with
    ``regions`` (input, output), only the names of the shared-memory regions that hold it."""
    from tritonclient.grpc import service_pb2

    req = service_pb2.ModelInferRequest(model_name=MODEL)
    inp = req.inputs.add(name="input", datatype="FP32", shape=list(shape))
    out = req.outputs.add(name="output")
    x = sample(shape)
    if regions is None:
        req.raw_input_contents.append(x.tobytes())
    else:
        for tensor, region in ((inp, regions[0]), (out, regions[1])):
            tensor.parameters["shared_memory_region"].string_param = region
            tensor.parameters["shared_memory_byte_size"].int64_param = x.nbytes
    return req.SerializeToString()


# --- the HTTP load generator (runs in its own process) ---
async def _client(port: int, request: bytes, until: float, lat: list[float], errs: list[int]):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            else:
                await _read_chunks(reader, head)
            if status != 200:
                errs.append(status)
            else:
                lat.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def _read_chunks(reader: asyncio.StreamReader, head: bytes) -> None:
    """Reads a chunked body (KServe's binary replies carry no Content-Length); nothing when
    the reply has no body."""
    if not re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
        return
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        await reader.readexactly(size + 2)  # the chunk and its CRLF; after the last, no trailer
        if not size:
            return


def server_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds (user + system) used so far by the processes ``pids`` and their children
    (uvicorn's workers, Triton's backend stubs); processes gone meanwhile count no more."""
    import psutil  # the bench extra's: main says so when it is missing

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            for proc in (root, *root.children(recursive=True)):
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
    return total


#: What a generator returns: latencies of good answers, errors, seconds, server CPU seconds,
#: the generator's own CPU seconds (all its threads: grpc's too).
Load = tuple[list[float], list, float, float, float]


async def _load(port: int, requests: Sequence[bytes], clients: int, duration: float,
                warmup: float, pids: Sequence[int]) -> Load:
    """``clients`` connections; client i sends ``requests[i % len(requests)]``."""
    until = time.perf_counter() + warmup
    await asyncio.gather(*(_client(port, requests[i % len(requests)], until, [], [])
                           for i in range(clients)))
    lat: list[float] = []
    errs: list[int] = []
    cpu, own, start = server_cpu_s(pids), time.process_time(), time.perf_counter()
    await asyncio.gather(*(_client(port, requests[i % len(requests)], start + duration, lat,
                                   errs) for i in range(clients)))
    return (lat, errs, time.perf_counter() - start, server_cpu_s(pids) - cpu,
            time.process_time() - own)


def _install_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()


def _run_load(args: tuple) -> Load:
    _install_uvloop()
    return asyncio.run(_load(*args))


def generate(port: int, request: bytes | Sequence[bytes], clients: int, duration: float,
             warmup: float, pids: Sequence[int] = ()) -> Load:
    requests = [request] if isinstance(request, bytes) else list(request)
    with get_context("spawn").Pool(1) as pool:
        return pool.apply(_run_load, ((port, requests, clients, duration, warmup, list(pids)),))


# --- the gRPC load generator (runs in its own process) ---
async def _grpc_client(stub, request, until: float, lat: list[float], errs: list,
                       out_bytes: int) -> None:
    """Calls ModelInfer back to back. An answer counts when its status is OK and it carries
    ``out_bytes`` of raw output (0: none, the output went to shared memory)."""
    import grpc

    infer = stub.ModelInfer
    while time.perf_counter() < until:
        t0 = time.perf_counter()
        try:
            reply = await infer(request)
        except grpc.aio.AioRpcError as exc:
            errs.append(exc.code().name)
            continue
        raw = reply.raw_output_contents
        if (len(raw[0]) if raw else 0) != out_bytes:
            errs.append("bad reply")
        else:
            lat.append(time.perf_counter() - t0)


async def _grpc_load(port: int, requests: Sequence[bytes], clients: int, duration: float,
                     warmup: float, out_bytes: int, pids: Sequence[int]) -> Load:
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    messages = [service_pb2.ModelInferRequest.FromString(r) for r in requests]
    # A local subchannel pool per channel: one TCP connection per client (channels with the
    # same arguments would otherwise share one).
    options = [("grpc.max_receive_message_length", GRPC_LIMIT),
               ("grpc.max_send_message_length", GRPC_LIMIT),
               ("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=options)
                for _ in range(clients)]
    try:
        await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), 60)
        stubs = [service_pb2_grpc.GRPCInferenceServiceStub(ch) for ch in channels]
        until = time.perf_counter() + warmup
        await asyncio.gather(*(_grpc_client(stub, messages[i % len(messages)], until, [], [],
                                            out_bytes) for i, stub in enumerate(stubs)))
        lat: list[float] = []
        errs: list = []
        cpu, own, start = server_cpu_s(pids), time.process_time(), time.perf_counter()
        await asyncio.gather(*(_grpc_client(stub, messages[i % len(messages)], start + duration,
                                            lat, errs, out_bytes)
                               for i, stub in enumerate(stubs)))
        return (lat, errs, time.perf_counter() - start, server_cpu_s(pids) - cpu,
                time.process_time() - own)
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))


def _run_grpc_load(args: tuple) -> Load:
    _install_uvloop()
    return asyncio.run(_grpc_load(*args))


def generate_grpc(port: int, requests: Sequence[bytes], clients: int, duration: float,
                  warmup: float, out_bytes: int, pids: Sequence[int] = ()) -> Load:
    with get_context("spawn").Pool(1) as pool:
        return pool.apply(_run_grpc_load, ((port, list(requests), clients, duration, warmup,
                                            out_bytes, list(pids)),))


# --- servers ---
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _grpc_ready(port: int) -> Callable[[], bool]:
    def ready() -> bool:
        import grpc
        from tritonclient.grpc import service_pb2, service_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                return stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=2).ready
            except grpc.RpcError:
                return False
    return ready


def _wait(probe: str | Callable[[], bool], procs: list[subprocess.Popen], timeout: float = 300,
          log: Path | None = None) -> None:
    """Until ``probe`` (a URL answering 200 or 405, or a callable) says ready."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log else ""
                raise RuntimeError(f"server exited with {proc.returncode}\n{tail}")
        if callable(probe):
            if probe():
                return
        else:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(probe, timeout=2).status_code in (200, 405):
                    return
        time.sleep(0.1)
    raise RuntimeError(f"{probe if isinstance(probe, str) else 'gRPC server'} not ready")


def grpc_echo_reply(request: Any) -> Any:
    """The gRPC echo's answer to a ``ModelInferRequest``: its tensors, as they came."""
    from tritonclient.grpc import service_pb2

    reply = service_pb2.ModelInferResponse(model_name=request.model_name, model_version="1",
                                           id=request.id)
    for tensor in request.inputs:
        reply.outputs.add(name="output", datatype=tensor.datatype, shape=tensor.shape)
    reply.raw_output_contents.extend(request.raw_input_contents)
    return reply


#: The gRPC ceilings (``_serve_grpc_echo``): server kind -> the table's server column.
GRPC_ECHOES = {"grpc-echo": "grpc echo", "grpc-kernel-echo": "grpc kernel echo"}


def grpc_kernel_reply(layer: Any) -> Callable[[Any], Any]:
    """The kernel echo's answer: ``layer`` applied to the request's first tensor (FP32 rows),
    as normserve runs a lone request (the body's bytes copied into an aligned array, the
    kernel writing a new one), its bytes sent back."""
    from tritonclient.grpc import service_pb2

    def reply(request: Any) -> Any:
        tensor = request.inputs[0]
        x = np.frombuffer(request.raw_input_contents[0], np.float32).reshape(tuple(tensor.shape))
        y = layer.apply(x.copy())
        answer = service_pb2.ModelInferResponse(model_name=request.model_name,
                                                model_version="1", id=request.id)
        answer.outputs.add(name="output", datatype="FP32", shape=tensor.shape)
        answer.raw_output_contents.append(y.tobytes())
        return answer

    return reply


def _serve_grpc_echo(port: int, reuse_port: bool, kernel: bool = False) -> None:
    """The gRPC ceiling (the FastAPI echo's counterpart): a bare ``grpc.aio`` server whose
    ModelInfer (and ModelStreamInfer) answers with the posted tensor. Besides, only what
    perf_analyzer asks before and around its load: liveness, readiness, the demo model's
    metadata and configuration (batches of [1024] FP32 rows, as normserve says) and its
    statistics (counts of the calls answered).

    ``kernel``: the kernel echo, which answers with the layer norm of the posted rows
    (``grpc_kernel_reply``): the least a server that computes does beyond the echo (no
    batching, checks, metrics), so normserve's cost apart from the kernel call shows."""
    import grpc
    from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

    answer = grpc_echo_reply
    if kernel:
        from normserve import kernels
        from normserve.kernels.cpu_jit import set_parallel_min_work
        from normserve.service.settings import Settings

        set_parallel_min_work(Settings.parallel_min_work)  # the threads as `serve` uses them
        layer = kernels.prepare("layer_norm", {}, normalized_shape=[pa.FEATURES])
        layer.warmup([np.dtype(np.float32)])
        answer = grpc_kernel_reply(layer)

    fp32 = model_config_pb2.DataType.TYPE_FP32
    config = model_config_pb2.ModelConfig(
        name=MODEL, max_batch_size=256,
        input=[model_config_pb2.ModelInput(name="input", data_type=fp32, dims=[1024])],
        output=[model_config_pb2.ModelOutput(name="output", data_type=fp32, dims=[1024])])
    tensor = service_pb2.ModelMetadataResponse.TensorMetadata
    metadata = service_pb2.ModelMetadataResponse(
        name=MODEL, versions=["1"], platform="echo",
        inputs=[tensor(name="input", datatype="FP32", shape=[-1, 1024])],
        outputs=[tensor(name="output", datatype="FP32", shape=[-1, 1024])])
    answered = [0, 0]  # calls, rows

    def echo(request):
        answered[0] += 1
        answered[1] += sum(t.shape[0] if t.shape else 1 for t in request.inputs)
        return answer(request)

    class Echo(service_pb2_grpc.GRPCInferenceServiceServicer):
        async def ServerLive(self, request, context):
            return service_pb2.ServerLiveResponse(live=True)

        async def ServerReady(self, request, context):
            return service_pb2.ServerReadyResponse(ready=True)

        async def ServerMetadata(self, request, context):
            return service_pb2.ServerMetadataResponse(name="grpc echo", version="0")

        async def ModelReady(self, request, context):
            return service_pb2.ModelReadyResponse(ready=True)

        async def ModelMetadata(self, request, context):
            return metadata

        async def ModelConfig(self, request, context):
            return service_pb2.ModelConfigResponse(config=config)

        async def ModelStatistics(self, request, context):
            stats = service_pb2.ModelStatisticsResponse()
            entry = stats.model_stats.add(name=MODEL, version="1", inference_count=answered[1],
                                          execution_count=answered[0])
            entry.inference_stats.success.count = answered[0]
            return stats

        async def ModelInfer(self, request, context):
            return echo(request)

        async def ModelStreamInfer(self, request_iterator, context):
            async for request in request_iterator:
                yield service_pb2.ModelStreamInferResponse(infer_response=echo(request))

    async def serve() -> None:
        srv = grpc.aio.server(options=[("grpc.max_receive_message_length", GRPC_LIMIT),
                                       ("grpc.max_send_message_length", GRPC_LIMIT),
                                       ("grpc.so_reuseport", int(reuse_port))])
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), srv)
        srv.add_insecure_port(f"127.0.0.1:{port}")
        await srv.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await srv.stop(1)

    _install_uvloop()
    asyncio.run(serve())


@dataclass
class Ports:
    http: int
    grpc: int | None = None
    metrics: int | None = None  # None: /metrics on the HTTP port
    pids: tuple[int, ...] = ()  # the server's processes (their children count too)


@contextlib.contextmanager
def server(kind: str, workers: int, batching: bool, shared_memory: bool = False,
           python: str | None = None) -> Iterator[Ports]:
    """One server of ``kind`` (echo, asgi-echo, grpc-echo, grpc-kernel-echo, normserve, or a
    peer of ``PEERS``) on free loopback ports. ``python``: the interpreter of the peer
    (default: this one)."""
    ports = Ports(_free_port())
    stack = contextlib.ExitStack()
    probe: str | Callable[[], bool]
    if kind in ("echo", "asgi-echo"):
        target = (["--factory", "normserve.bench.load:_echo_app"] if kind == "echo"
                  else ["normserve.bench.load:_asgi_echo", "--lifespan", "off"])
        cmd = [sys.executable, "-m", "uvicorn", *target, "--port", str(ports.http),
               "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
        probe = f"http://127.0.0.1:{ports.http}/echo"
    elif kind in GRPC_ECHOES:
        ports.grpc = _free_port()
        cmd = [sys.executable, "-c", "from normserve.bench.load import _serve_grpc_echo; "
               f"_serve_grpc_echo({ports.grpc}, {workers > 1}, {kind == 'grpc-kernel-echo'})"]
        probe = _grpc_ready(ports.grpc)
    elif kind in PEERS:
        ports.grpc, ports.metrics = _free_port(), _free_port()
        scratch = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"loadbench-{kind}-"))
        cmd = PEERS[kind].command(python or sys.executable, ports.http, ports.grpc,
                                  ports.metrics, write_params(scratch))
        probe = f"http://127.0.0.1:{ports.http}/v2/models/{MODEL}/ready"
    else:
        # Always a free gRPC port: the default 8001 may be taken, and one server then serves
        # every mode.
        ports.grpc = _free_port()
        cmd = [sys.executable, "-m", "normserve.cli", "serve", "--port", str(ports.http),
               "--grpc-port", str(ports.grpc), "--workers", str(workers), "--log-level",
               "warning", *([] if batching else ["--no-batching"]),
               *(["--allow-shared-memory"] if shared_memory else [])]
        probe = f"http://127.0.0.1:{ports.http}/v2/health/ready"
    # The gRPC echo has no worker pool of its own: one process per worker, sharing the port.
    copies = workers if kind in GRPC_ECHOES else 1
    with stack, tempfile.NamedTemporaryFile("w+", prefix=f"loadbench-{kind}-",
                                            suffix=".log") as log:
        procs: list[subprocess.Popen] = []
        try:
            for _ in range(copies):
                procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
            _wait(probe, procs, log=Path(log.name))
            ports.pids = tuple(proc.pid for proc in procs)
            yield ports
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _scrape(ports: Ports, workers: int) -> dict[str, tuple[float, float]]:
    """pid -> (requests, batches) of the model, from as many workers as a few scrapes reach."""
    import httpx

    url = f"http://127.0.0.1:{ports.metrics or ports.http}/metrics"
    seen: dict[str, tuple[float, float]] = {}
    for _ in range(12 if workers > 1 else 1):
        text = httpx.get(url, timeout=10).text
        pid = re.search(r'normserve_process_info\{pid="(\d+)"\}', text)
        # normserve's counters end in _total, Triton's do not; MLServer counts requests under
        # its own name, one series per version label (REST says "None", gRPC ""), and its peer
        # script counts batches under Triton's name.
        reqs = re.findall(rf'(?:nv_inference_request_success|model_infer_request_success)'
                          rf'(?:_total)?\{{model="{MODEL}".*\}} (\S+)', text)
        execs = re.findall(rf'nv_inference_exec_count(?:_total)?\{{model="{MODEL}".*\}} (\S+)',
                           text)
        seen[pid.group(1) if pid else "?"] = (sum(map(float, reqs)), sum(map(float, execs)))
        if len(seen) >= workers:
            break
    return seen


# --- system shared memory: each client's own input and output regions ---
class ShmClients:
    """``count`` pairs of POSIX shared-memory regions (input holding the sample, output),
    registered with the server over ``transport`` ("grpc" or "http"); ``close()`` unregisters
    and destroys them."""

    def __init__(self, ports: Ports, transport: str, shape: tuple[int, int], count: int) -> None:
        import tritonclient.utils.shared_memory as shm

        self.shm, self.ports, self.transport, self.shape = shm, ports, transport, shape
        self.x = sample(shape)
        self.nbytes = self.x.nbytes
        self.handles: dict[str, object] = {}
        self.registered: list[str] = []
        self.pairs: list[tuple[str, str]] = []
        self._stub = self._channel = None
        tag = f"nsbench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        try:
            if transport == "grpc":
                import grpc
                from tritonclient.grpc import service_pb2_grpc

                self._channel = grpc.insecure_channel(f"127.0.0.1:{ports.grpc}")
                self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
            for i in range(count):
                pair = (f"{tag}-{i}-in", f"{tag}-{i}-out")
                for name in pair:
                    self.handles[name] = shm.create_shared_memory_region(
                        name, "/" + name, self.nbytes)
                shm.set_shared_memory_region(self.handles[pair[0]], [self.x])
                for name in pair:
                    self._register(name)
                self.pairs.append(pair)
        except BaseException:
            self.close()
            raise

    def _register(self, name: str) -> None:
        if self.transport == "grpc":
            from tritonclient.grpc import service_pb2

            self._stub.SystemSharedMemoryRegister(service_pb2.SystemSharedMemoryRegisterRequest(
                name=name, key="/" + name, offset=0, byte_size=self.nbytes), timeout=30)
        else:
            import httpx

            httpx.post(f"http://127.0.0.1:{self.ports.http}/v2/systemsharedmemory/region/"
                       f"{name}/register", json={"key": "/" + name, "offset": 0,
                                                 "byte_size": self.nbytes},
                       timeout=30).raise_for_status()
        self.registered.append(name)

    def _unregister(self, name: str) -> None:
        if self.transport == "grpc":
            from tritonclient.grpc import service_pb2

            self._stub.SystemSharedMemoryUnregister(
                service_pb2.SystemSharedMemoryUnregisterRequest(name=name), timeout=30)
        else:
            import httpx

            httpx.post(f"http://127.0.0.1:{self.ports.http}/v2/systemsharedmemory/region/"
                       f"{name}/unregister", timeout=30).raise_for_status()

    def requests(self, clients: int) -> list[bytes]:
        """One request per client, over the cell's transport."""
        pairs = self.pairs[:clients]
        if self.transport == "grpc":
            return [grpc_request(self.shape, pair) for pair in pairs]
        path = f"/v2/models/{MODEL}/infer"
        return [build_request(path, *shm_body(self.shape, *pair, self.nbytes), self.ports.http)
                for pair in pairs]

    def clear_outputs(self, clients: int) -> None:
        zeros = np.zeros(self.shape, np.float32)
        for _, out in self.pairs[:clients]:
            self.shm.set_shared_memory_region(self.handles[out], [zeros])

    def wrong_outputs(self, clients: int, expected: np.ndarray) -> int:
        """How many of the first ``clients`` output regions do not hold the expected answer."""
        wrong = 0
        for _, out in self.pairs[:clients]:
            y = self.shm.get_contents_as_numpy(self.handles[out], np.float32, self.shape)
            wrong += not np.allclose(y, expected, rtol=1e-5, atol=1e-5)
        return wrong

    def close(self) -> None:
        for name in self.registered:
            with contextlib.suppress(Exception):
                self._unregister(name)
        self.registered.clear()
        for handle in self.handles.values():
            with contextlib.suppress(Exception):
                self.shm.destroy_shared_memory_region(handle)
        self.handles.clear()
        if self._channel is not None:
            self._channel.close()


def _grpc_answer(ports: Ports, shape: tuple[int, int]) -> np.ndarray:
    """The model's answer for the sample, over plain gRPC: what the shared-memory cells must
    find in their output regions."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{ports.grpc}", options=[
            ("grpc.max_receive_message_length", GRPC_LIMIT)]) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(service_pb2.ModelInferRequest.FromString(grpc_request(shape)),
                                timeout=60)
    out = reply.outputs[0]
    raw = reply.raw_output_contents
    data = (np.frombuffer(raw[0], np.float32) if raw
            else np.asarray(out.contents.fp32_contents, np.float32))
    return data.reshape(tuple(out.shape))


def _http_answer(ports: Ports, body: bytes, headers: dict[str, str]) -> np.ndarray:
    """The model's answer to an HTTP v2 request, JSON or binary (the binary tensor
    extension: a JSON header of Inference-Header-Content-Length bytes, then the raw tensor)."""
    import httpx

    reply = httpx.post(f"http://127.0.0.1:{ports.http}/v2/models/{MODEL}/infer", content=body,
                       headers=headers, timeout=60)
    reply.raise_for_status()
    size = int(reply.headers.get("inference-header-content-length", len(reply.content)))
    out = orjson.loads(reply.content[:size])["outputs"][0]
    data = (np.frombuffer(reply.content[size:], np.float32) if size < len(reply.content)
            else np.asarray(out["data"], np.float32))
    return data.reshape(out["shape"])


def _answer(mode: str, ports: Ports, shape: tuple[int, int]) -> np.ndarray:
    """The answer to the request the cells of ``mode`` send (the shared-memory modes: over
    plain gRPC, the answer their output regions are then checked against)."""
    if mode in ("http-binary", "http-json"):
        return _http_answer(ports, *infer_body(shape, mode.removeprefix("http-"), "input"))
    return _grpc_answer(ports, shape)


def wrong_answer(mode: str, ports: Ports, payload: str) -> str | None:
    """Why a peer's answer in ``mode`` is not NumPy's layer norm of the sample, or None when
    it is: a peer is measured only once its answers are right."""
    import grpc
    import httpx

    shape = PAYLOADS[payload]
    try:
        y = _answer(mode, ports, shape)
    except (httpx.HTTPError, grpc.RpcError, LookupError, TypeError, ValueError) as exc:
        return f"no answer: {exc!r}"[:500]
    want = reference(sample(shape))
    if y.shape != want.shape:
        return f"output shape {y.shape}, want {want.shape}"
    if not np.allclose(y, want, rtol=1e-4, atol=1e-4):
        return f"max |error| {np.nanmax(np.abs(y - want)):.3g} against NumPy"
    return None


# --- the matrix ---
class Cell(NamedTuple):
    """One measured cell."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu_us: float  # the server's CPU per answer (good or not), microseconds
    gen_us: float  # the load generator's own CPU per answer, microseconds


@dataclass
class Row:
    server: str
    workers: int
    batching: str
    protocol: str
    payload: str
    clients: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    batch: str
    cpu_us: float = float("nan")
    gen_us: float = float("nan")

    @classmethod
    def of(cls, server: str, workers: int, batching: str, protocol: str, payload: str,
           clients: int, cell: Cell, batch: str) -> Row:
        return cls(server, workers, batching, protocol, payload, clients, cell.rps,
                   cell.p50_ms, cell.p99_ms, cell.errors, batch, cell.cpu_us, cell.gen_us)

    def cells(self) -> list[str]:
        return [self.server, str(self.workers), self.batching, self.protocol, self.payload,
                str(self.clients), f"{self.rps:.0f}", f"{self.p50_ms:.2f}", f"{self.p99_ms:.2f}",
                str(self.errors), self.batch, f"{self.cpu_us:.0f}", f"{self.gen_us:.0f}"]


HEADER = ["server", "workers", "batching", "protocol", "payload", "clients", "req/s", "p50 ms",
          "p99 ms", "errors", "mean batch (requests)", "server CPU us/req",
          "generator CPU us/req"]

Measure = Callable[[int], Cell]


def _stats(lat: list[float], errs: list, elapsed: float, cpu_s: float, gen_s: float) -> Cell:
    answers = len(lat) + len(errs)
    cpu_us, gen_us = ((cpu_s / answers * 1e6, gen_s / answers * 1e6) if answers
                      else (float("nan"), float("nan")))
    if not lat:
        return Cell(0.0, float("nan"), float("nan"), len(errs), cpu_us, gen_us)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    return Cell(len(lat) / elapsed, q[49] * 1e3, q[98] * 1e3, len(errs), cpu_us, gen_us)


def _measure(ports: Ports, path: str, body: bytes, headers: dict[str, str], clients: int,
             args: argparse.Namespace) -> Cell:
    return _stats(*generate(ports.http, build_request(path, body, headers, ports.http), clients,
                            args.duration, args.warmup, ports.pids))


@contextlib.contextmanager
def driver(mode: str, ports: Ports, payload: str, args: argparse.Namespace,
           input_name: str = "x") -> Iterator[Measure]:
    """``measure(clients) -> Cell`` for one mode and payload; for the shared-memory modes the
    regions of ``max(args.clients)`` clients live as long as the context."""
    shape = PAYLOADS[payload]
    nbytes = shape[0] * shape[1] * 4
    if mode == ECHO:
        body, _ = infer_body(shape, "binary", input_name)
        yield lambda clients: _measure(ports, "/echo", body, {}, clients, args)
    elif mode in ("http-binary", "http-json"):
        body, headers = infer_body(shape, mode.removeprefix("http-"), input_name)
        yield lambda clients: _measure(ports, f"/v2/models/{MODEL}/infer", body, headers,
                                       clients, args)
    elif mode in pa.MODES:
        yield pa.measurer(mode, ports, shape[0], args)
    elif mode == "grpc":
        request = grpc_request(shape)
        yield lambda clients: _stats(*generate_grpc(ports.grpc, [request], clients,
                                                    args.duration, args.warmup, nbytes,
                                                    ports.pids))
    else:
        expected = _grpc_answer(ports, shape)
        regions = ShmClients(ports, mode.removeprefix("shm-"), shape, max(args.clients))

        def measure(clients: int) -> Cell:
            regions.clear_outputs(clients)
            requests = regions.requests(clients)
            if mode == "shm-grpc":
                result = generate_grpc(ports.grpc, requests, clients, args.duration,
                                       args.warmup, 0, ports.pids)
            else:
                result = generate(ports.http, requests, clients, args.duration, args.warmup,
                                  ports.pids)
            cell = _stats(*result)
            # Every client's output region must hold the answer: the server wrote it there.
            return cell._replace(errors=cell.errors + regions.wrong_outputs(clients, expected))

        try:
            yield measure
        finally:
            regions.close()


def skip(args: argparse.Namespace, why: str) -> None:
    """Says what part of the matrix did not run, now and in the written table."""
    print(f"(skipped: {why})", flush=True)
    args.skipped = [*getattr(args, "skipped", []), why]


def _batch(before: dict, after: dict) -> str:
    dr = sum(after[k][0] - before[k][0] for k in after if k in before)
    de = sum(after[k][1] - before[k][1] for k in after if k in before)
    return f"{dr / de:.2f}" if de else "n/a"


@dataclass
class Contender:
    """One server of the run: started once, then measured cell by cell beside the others."""

    label: str  # the table's server column
    workers: int
    batching: str  # the table's batching column
    modes: list[str]  # what it is driven with ("echo": the HTTP echoes' bytes)
    ports: Ports
    input_name: str = "x"
    counts_batches: bool = False  # its /metrics count requests and batches
    peer: bool = False  # each mode's answer is checked against NumPy before it is measured
    echo: bool = False  # a ceiling: it returns the bytes it gets
    failed: bool = False

    def protocol(self, mode: str) -> str:
        if self.echo:
            return {ECHO: "bytes", "grpc": "grpc bytes"}.get(mode) or f"{MODES[mode]} bytes"
        return MODES[mode]


def run(args: argparse.Namespace) -> list[Row]:
    """Every server of the run at once, each cell measured on each in turn (normserve, the
    echoes, the peers): a drift of the machine's speed then moves every server of a cell alike,
    where server after server it moved their ratios."""
    _find_perf_analyzer(args)
    with contextlib.ExitStack() as stack:
        contenders = _start_own(args, stack) + _start_peers(args, stack)
        return interleave(args, contenders)


def run_peers(args: argparse.Namespace) -> list[Row]:
    """The peers of ``--peers`` alone, interleaved (a peer that is missing, does not start or
    fails is skipped, saying why; the rows already made stay)."""
    _find_perf_analyzer(args)
    with contextlib.ExitStack() as stack:
        return interleave(args, _start_peers(args, stack))


def _find_perf_analyzer(args: argparse.Namespace) -> None:
    """The perf_analyzer modes are left out, saying how to install it, when it is missing."""
    wanted = [m for m in args.modes if m in pa.MODES]
    if wanted:
        args.perf_analyzer, why = pa.find()
        if args.perf_analyzer is None:
            skip(args, f"{', '.join(wanted)}: {why}")
            args.modes = [m for m in args.modes if m not in pa.MODES]


def _start_own(args: argparse.Namespace, stack: contextlib.ExitStack) -> list[Contender]:
    """The echoes (the ceilings) and normserve, for each --workers and --batching."""
    out = []
    shm_modes = [m for m in args.modes if m in SHM_MODES]
    for workers in args.workers:
        if args.echo:
            for kind, label in (("echo", "fastapi echo"), ("asgi-echo", "asgi echo")):
                out.append(Contender(label, workers, "-", [ECHO],
                                     stack.enter_context(server(kind, workers, True)),
                                     echo=True))
            grpc_modes = [m for m in ("grpc", *pa.ECHO_MODES) if m in args.modes]
            if grpc_modes:
                for kind, label in GRPC_ECHOES.items():
                    out.append(Contender(label, workers, "-", grpc_modes,
                                         stack.enter_context(server(kind, workers, True)),
                                         echo=True))
        if shm_modes and workers > 1:
            skip(args, f"{', '.join(shm_modes)} with {workers} workers: normserve serves shared "
                       "memory with one worker only")
        modes = [m for m in args.modes if workers == 1 or m not in SHM_MODES]
        for batching in args.batching:
            ports = stack.enter_context(server("normserve", workers, batching == "on",
                                               shared_memory=workers == 1 and bool(shm_modes)))
            out.append(Contender("normserve", workers, batching, modes, ports,
                                 counts_batches=True))
    return out


def _start_peers(args: argparse.Namespace, stack: contextlib.ExitStack) -> list[Contender]:
    import grpc
    import httpx

    out = []
    for name in args.peers:
        python = args.peer_python.get(name)
        try:
            label = PEERS[name].label.format(version=installed(name, python))
        except PeerMissing as exc:
            skip(args, f"the {name} peer: {exc}")
            continue
        modes = []
        for mode in args.modes:
            unsupported = PEERS[name].unsupported
            why = unsupported.get(mode) or unsupported.get(pa.BASE.get(mode, mode))
            if why:
                skip(args, f"{label}, {MODES[mode]}: {why}")
            else:
                modes.append(mode)
        if not modes:
            continue
        try:
            ports = stack.enter_context(server(name, 1, True, python=python))
        except (RuntimeError, OSError, httpx.HTTPError, grpc.RpcError) as exc:
            skip(args, f"{label} failed: {type(exc).__name__}: {exc}")  # it did not start
            continue
        out.append(Contender(label, 1, PEERS[name].batching, modes, ports, input_name="input",
                             counts_batches=PEERS[name].counts_batches, peer=True))
    return out


def interleave(args: argparse.Namespace, contenders: list[Contender]) -> list[Row]:
    """For each payload, mode and client count, one cell on each contender serving the mode, in
    turn. Rows are printed as they come and returned grouped by server."""
    import grpc
    import httpx

    failures = (RuntimeError, OSError, httpx.HTTPError, grpc.RpcError)
    rows: list[tuple[tuple, Row]] = []
    order = [ECHO, *args.modes]
    for (p, payload), (m, mode) in itertools.product(enumerate(args.payloads), enumerate(order)):
        with contextlib.ExitStack() as drivers:
            measures = []
            for i, who in enumerate(contenders):
                if mode not in who.modes or who.failed:
                    continue
                try:
                    wrong = wrong_answer(mode, who.ports, payload) if who.peer else None
                    if wrong:
                        skip(args, f"{who.label}, {MODES[mode]} {payload}: WRONG ANSWER, not "
                                   f"measured ({wrong})")
                        continue
                    measures.append((i, who, drivers.enter_context(
                        driver(mode, who.ports, payload, args, who.input_name))))
                except failures as exc:
                    _failed(args, who, exc)
            for (c, clients), (i, who, measure) in itertools.product(enumerate(args.clients),
                                                                     measures):
                if who.failed:
                    continue
                try:
                    before = _scrape(who.ports, who.workers) if who.counts_batches else {}
                    cell = measure(clients)
                    batch = (_batch(before, _scrape(who.ports, who.workers))
                             if who.counts_batches else "-")
                except pa.Failed as exc:  # that cell only: perf_analyzer gave no result
                    skip(args, f"{who.label}, {MODES[mode]} {payload}, {clients} clients: {exc}")
                    continue
                except failures as exc:
                    _failed(args, who, exc)
                    continue
                row = Row.of(who.label, who.workers, who.batching, who.protocol(mode), payload,
                             clients, cell, batch)
                print(" | ".join(row.cells()), flush=True)
                rows.append(((i, m, p, c), row))
    return [row for _, row in sorted(rows, key=lambda kr: kr[0])]


def _failed(args: argparse.Namespace, who: Contender, exc: Exception) -> None:
    """A peer that died or refused a call is skipped from then on, saying why (its rows
    stay, the others go on); normserve or an echo failing ends the run."""
    if not who.peer:
        raise exc
    skip(args, f"{who.label} failed: {type(exc).__name__}: {exc}")
    who.failed = True


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _room(want_rps: float, r: Row, cores: int) -> str:
    """For a throughput target not met: what reaching ``want_rps`` would leave the server of
    the machine's CPU per answer, once the load generator (on the same cores) has had its
    share. At or below zero no server could reach it with this generator here."""
    if r.gen_us != r.gen_us:  # not measured
        return ""
    room = cores * 1e6 / want_rps - r.gen_us
    if room <= 0:
        return (f"; {want_rps:.0f} req/s is past what {cores} core(s) give the load generator "
                f"alone ({r.gen_us:.0f} us of CPU per answer)")
    return (f"; on {cores} core(s), with the load generator's {r.gen_us:.0f} us of CPU per "
            f"answer, {want_rps:.0f} req/s leaves the server at most {room:.0f} us per answer "
            f"(it used {r.cpu_us:.0f}, {r.rps * r.cpu_us / 1e6:.2f} core(s) busy)")


def targets(rows: list[Row], cores: int | None = None) -> list[str]:
    """The issue's targets, checked on whatever part of the matrix was run, on ``cores``
    (default: this machine's)."""
    cores = cores or os.cpu_count() or 1
    notes = []
    idx = {(r.server, r.workers, r.batching, r.protocol, r.payload, r.clients): r for r in rows}
    for (srv, w, b, proto, payload, c), r in idx.items():
        if srv != "normserve" or c != 32:
            continue
        echo = idx.get(("fastapi echo", w, "-", "bytes", payload, 32))
        if proto == "v2 binary" and b == "on" and echo and echo.rps:
            ratio = r.rps / echo.rps
            notes.append(f"- v2 binary {payload}, {w} worker(s), 32 clients: {ratio:.2f}x the "
                         f"echo's req/s (target >= 0.8): {'met' if ratio >= 0.8 else 'NOT met'}")
        bare = idx.get(("asgi echo", w, "-", "bytes", payload, 32))
        if proto == "v2 binary" and b == "on" and bare and bare.rps:
            notes.append(f"- v2 binary {payload}, {w} worker(s), 32 clients: "
                         f"{r.rps / bare.rps:.2f}x the bare ASGI echo's req/s ({r.rps:.0f} vs "
                         f"{bare.rps:.0f}): what uvicorn itself leaves")
        if b == "on":
            notes.append(f"- {proto} {payload}, {w} worker(s), 32 clients: p99/p50 = "
                         f"{r.p99_ms / r.p50_ms:.2f} (target <= 3): "
                         f"{'met' if r.p99_ms <= 3 * r.p50_ms else 'NOT met'}")
            off = idx.get((srv, w, "off", proto, payload, c))
            if off:
                notes.append(f"- {proto} {payload}, {w} worker(s), 32 clients: batching on "
                             f"{r.rps:.0f} vs off {off.rps:.0f} req/s")
    # gRPC and shared memory against normserve's own HTTP binary, same workers and batching.
    for (srv, w, b, proto, payload, c), r in idx.items():
        if srv != "normserve" or b != "on":
            continue
        want = {("v2 grpc", "1x1024", 32): 0.8, ("shm grpc", "64x1024", 8): 3.0,
                ("shm http", "64x1024", 8): 3.0}.get((proto, payload, c))
        http = idx.get((srv, w, b, "v2 binary", payload, c))
        if want is None or not (http and http.rps):
            continue
        ratio = r.rps / http.rps
        notes.append(f"- {proto} {payload}, {w} worker(s), {c} clients: {ratio:.2f}x normserve's "
                     f"HTTP v2 binary req/s ({r.rps:.0f} vs {http.rps:.0f}, target >= "
                     f"{want:g}): {_met(ratio >= want)}"
                     + ("" if ratio >= want else _room(want * http.rps, r, cores)))
    # gRPC against its own ceiling (a bare grpc.aio echo), as HTTP against FastAPI's.
    for (srv, w, b, proto, payload, c), r in idx.items():
        echo = idx.get(("grpc echo", w, "-", "grpc bytes", payload, c))
        if srv == "normserve" and b == "on" and proto == "v2 grpc" and c == 32 and echo \
                and echo.rps:
            notes.append(f"- v2 grpc {payload}, {w} worker(s), 32 clients: {r.rps / echo.rps:.2f}x "
                         f"the bare grpc.aio echo's req/s ({r.rps:.0f} vs {echo.rps:.0f})")
    notes += peer_targets(rows, cores)
    notes += pa.targets(rows)
    # req/s never falls as clients grow from 8 to 32 to 128 (normserve with batching on, and
    # the peers, per mode and payload).
    series: dict[tuple, list[Row]] = {}
    for r in rows:
        if (r.batching == "on" or _is_peer(r)) and r.clients in (8, 32, 128):
            series.setdefault((r.server, r.workers, r.protocol, r.payload), []).append(r)
    for (srv, w, proto, payload), rs in series.items():
        if len(rs) < 2:
            continue
        rs.sort(key=lambda r: r.clients)
        ok = all(a.rps <= b.rps for a, b in itertools.pairwise(rs))
        steps = " -> ".join(f"{r.rps:.0f} ({r.clients})" for r in rs)
        notes.append(f"- {srv} {proto} {payload}, {w} worker(s): req/s by clients {steps} "
                     f"(target: never falls): {_met(ok)}")
    return notes


def _is_peer(row: Row) -> bool:
    return row.server != "normserve" and not row.server.endswith("echo")


def _peer_target(protocol: str, payload: str, clients: int) -> float | None:
    """The issue's ratio to the best peer: 3x in every HTTP cell at 1, 8 and 32 clients; 2x
    for gRPC 1x1024 at 32 clients."""
    if protocol in ("v2 binary", "v2 json") and clients in (1, 8, 32):
        return 3.0
    return 2.0 if (protocol, payload, clients) == ("v2 grpc", "1x1024", 32) else None


def peer_targets(rows: list[Row], cores: int) -> list[str]:
    """normserve (one worker, batching on) next to each peer cell by cell at 32 clients, then
    the issue's targets against the best peer of each cell (on ``cores``)."""
    mine = {(r.protocol, r.payload, r.clients): r for r in rows
            if r.server == "normserve" and r.workers == 1 and r.batching == "on"}
    peers = [r for r in rows if _is_peer(r) and r.rps]
    notes = []
    for r in peers:
        ns = mine.get((r.protocol, r.payload, r.clients))
        if ns and r.clients == 32:
            notes.append(f"- {r.protocol} {r.payload}, 1 worker, 32 clients: normserve "
                         f"{ns.rps:.0f} vs {r.server} {r.rps:.0f} req/s ({ns.rps / r.rps:.2f}x); "
                         f"server CPU per request {ns.cpu_us:.0f} vs {r.cpu_us:.0f} us "
                         f"({r.cpu_us / ns.cpu_us:.2f}x less)")
    cells: dict[tuple[str, str, int], list[Row]] = {}
    for r in peers:
        cells.setdefault((r.protocol, r.payload, r.clients), []).append(r)
    for (proto, payload, c), rs in cells.items():
        want, ns = _peer_target(proto, payload, c), mine.get((proto, payload, c))
        if want is None or ns is None:
            continue
        best = max(rs, key=lambda r: r.rps)
        ratio = ns.rps / best.rps
        notes.append(f"- {proto} {payload}, {c} clients: normserve {ns.rps:.0f} req/s, "
                     f"{ratio:.2f}x the best peer, {best.server} ({best.rps:.0f}; of "
                     f"{', '.join(r.server for r in rs)}) (target >= {want:g}): "
                     f"{_met(ratio >= want)}"
                     + ("" if ratio >= want else _room(want * best.rps, ns, cores)))
    return notes


def _peer_python(text: str) -> tuple[str, str]:
    name, _, python = text.partition("=")
    if name not in PEERS or not python:
        raise argparse.ArgumentTypeError(f"want NAME=PYTHON, NAME one of {', '.join(PEERS)}")
    return name, python


def _workers(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"want a number >= 1 or auto, got {text!r}")
    return int(text)


def _resolve_auto(args: argparse.Namespace) -> None:
    """``--workers auto``: as many workers as ``normserve serve --workers auto`` starts here
    (without shared memory), said in the table's heading."""
    if "auto" not in args.workers:
        return
    from normserve.service.cpus import plan_workers, usable_cpus

    plan = plan_workers(None, usable_cpus())
    args.auto_workers = f"--workers auto is {plan.workers} here ({plan.why})"
    args.workers = list(dict.fromkeys(plan.workers if w == "auto" else w for w in args.workers))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m normserve.bench.load",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--payloads", nargs="+", choices=list(PAYLOADS), default=list(PAYLOADS))
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=None,
                   help="what normserve and the peers are driven with (default: all; shared "
                        "memory with one worker only; the pa-* modes with perf_analyzer, from "
                        "$PERF_ANALYZER, skipped saying how to install it when unset)")
    p.add_argument("--batching", nargs="+", choices=("on", "off"), default=["on", "off"])
    p.add_argument("--workers", type=_workers, nargs="+", default=[1, 2],
                   help="normserve's workers (and the echoes'); auto: as many as `normserve "
                        "serve` starts by default here")
    p.add_argument("--no-echo", dest="echo", action="store_false",
                   help="leave out the bare FastAPI, ASGI and grpc.aio echoes (the ceilings)")
    p.add_argument("--peers", nargs="+", choices=list(PEERS), default=[],
                   help="also drive these servers with the selected modes they serve, after "
                        "checking their answers; skipped, saying why, when missing or wrong")
    p.add_argument("--peer-python", type=_peer_python, action="append", default=[],
                   metavar="NAME=PYTHON",
                   help="the interpreter that runs peer NAME (repeatable; default: this one); "
                        "`python -m normserve.bench.load_peers setup DIR` makes them")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds measured per cell (default 5; --quick: 1)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds of load before each cell (default 1; --quick: 0.3)")
    p.add_argument("--pa-stability", type=int, default=None, metavar="PERCENT",
                   help="perf_analyzer's stability check (-s) for the pa-* modes: the last "
                        f"three windows within PERCENT (default {pa.STABILITY}; --quick: 100)")
    p.add_argument("--output", default="bench-results/loadbench.md")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 and 8 clients, one row, batching on, 1 worker, HTTP "
                        "binary, gRPC and both shared-memory modes")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.payloads = [1, 8], ["1x1024"]
        args.batching, args.workers = ["on"], [1]
        args.modes = args.modes or QUICK_MODES
        args.duration = 1.0 if args.duration is None else args.duration
        args.warmup = 0.3 if args.warmup is None else args.warmup
        args.pa_stability = 100 if args.pa_stability is None else args.pa_stability
    args.pa_stability = pa.STABILITY if args.pa_stability is None else args.pa_stability
    _resolve_auto(args)
    args.modes = args.modes or list(MODES)
    args.duration = 5.0 if args.duration is None else args.duration
    args.warmup = 1.0 if args.warmup is None else args.warmup
    args.peer_python = dict(args.peer_python)
    return args


def main(argv: list[str] | None = None) -> int:
    if not require("python -m normserve.bench.load", ("psutil",)):
        return 2
    args = parse_args(argv)
    rows = run(args)
    text = (f"Load benchmark (`python -m normserve.bench.load`) on {describe()}, "
            f"{args.duration:g} s per cell, load generator on the same machine"
            + (f"; {args.auto_workers}" if getattr(args, "auto_workers", None) else "")
            + ".\n\n"
            + table(rows) + "\n\n" + "\n".join(targets(rows)) + "\n"
            + "".join(f"\nSkipped: {why}\n" for why in getattr(args, "skipped", [])))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
