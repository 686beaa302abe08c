"""Load benchmark of the service (``python -m normserve.service.loadbench``): req/s, p50, p99
and the mean batch size actually formed, for normserve next to a bare FastAPI echo of the same
bytes (the HTTP ceiling of the machine).

The load generator is a small asyncio HTTP/1.1 client (keep-alive, one connection per client)
in its own process, so the numbers are not those of a Python HTTP library. The matrix of the
issue: clients 1, 8, 32, 128; one 1x1024 FP32 row and one 64x1024 block (layer norm); v2 binary
and v2 JSON; batching on and off; 1 and 2 workers. Results are written as a markdown table.
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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

MODEL = "layer_norm_1024"
PAYLOADS = {"1x1024": (1, 1024), "64x1024": (64, 1024)}


def _echo_app() -> FastAPI:
    """The HTTP ceiling: a bare FastAPI endpoint that returns the posted bytes."""
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/octet-stream")

    return app


# --- request bodies ---
def build_request(path: str, body: bytes, headers: dict[str, str], port: int) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode() + body


def infer_body(shape: tuple[int, int], protocol: str) -> tuple[bytes, dict[str, str]]:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if protocol == "json":
        body = orjson.dumps({"inputs": [{"name": "x", "shape": list(shape), "datatype": "FP32",
                                         "data": x.ravel().tolist()}]})
        return body, {"Content-Type": "application/json"}
    raw = x.tobytes()
    head = orjson.dumps({"inputs": [{"name": "x", "shape": list(shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}})
    return head + raw, {"Inference-Header-Content-Length": str(len(head)),
                        "Content-Type": "application/octet-stream"}


# --- the load generator (runs in its own process) ---
async def _client(port: int, request: bytes, until: float, lat: list[float], errs: list[int]):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            await reader.readexactly(int(m.group(1)) if m else 0)
            if status != 200:
                errs.append(status)
            else:
                lat.append(time.perf_counter() - t0)
    finally:
        writer.close()


async def _load(port: int, request: bytes, clients: int, duration: float, warmup: float):
    until = time.perf_counter() + warmup
    await asyncio.gather(*(_client(port, request, until, [], []) for _ in range(clients)))
    lat: list[float] = []
    errs: list[int] = []
    start = time.perf_counter()
    await asyncio.gather(*(_client(port, request, start + duration, lat, errs)
                           for _ in range(clients)))
    return lat, errs, time.perf_counter() - start


def _run_load(args: tuple) -> tuple[list[float], list[int], float]:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    return asyncio.run(_load(*args))


def generate(port: int, request: bytes, clients: int, duration: float, warmup: float):
    with get_context("spawn").Pool(1) as pool:
        return pool.apply(_run_load, ((port, request, clients, duration, warmup),))


# --- servers ---
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code in (200, 405):
                return
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready")


@contextlib.contextmanager
def server(kind: str, workers: int, batching: bool) -> Iterator[int]:
    port = _free_port()
    if kind == "echo":
        cmd = [sys.executable, "-m", "uvicorn", "--factory",
               "normserve.service.loadbench:_echo_app", "--port", str(port), "--workers",
               str(workers), "--no-access-log", "--log-level", "warning"]
        probe = f"http://127.0.0.1:{port}/echo"
    else:
        cmd = [sys.executable, "-m", "normserve.service.cli", "serve", "--port", str(port),
               "--workers", str(workers), "--log-level", "warning",
               *([] if batching else ["--no-batching"])]
        probe = f"http://127.0.0.1:{port}/v2/health/ready"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(probe, proc)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _scrape(port: int, workers: int) -> dict[str, tuple[float, float]]:
    """pid -> (requests, batches) of the model, from as many workers as a few scrapes reach."""
    import httpx

    seen: dict[str, tuple[float, float]] = {}
    for _ in range(12 if workers > 1 else 1):
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        pid = re.search(r'normserve_process_info\{pid="(\d+)"\}', text)
        reqs = re.search(rf'nv_inference_request_success_total\{{model="{MODEL}".*\}} (\S+)', text)
        execs = re.search(rf'nv_inference_exec_count_total\{{model="{MODEL}".*\}} (\S+)', text)
        seen[pid.group(1) if pid else "?"] = (float(reqs.group(1)) if reqs else 0.0,
                                              float(execs.group(1)) if execs else 0.0)
        if len(seen) >= workers:
            break
    return seen


# --- the matrix ---
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

    def cells(self) -> list[str]:
        return [self.server, str(self.workers), self.batching, self.protocol, self.payload,
                str(self.clients), f"{self.rps:.0f}", f"{self.p50_ms:.2f}", f"{self.p99_ms:.2f}",
                str(self.errors), self.batch]


HEADER = ["server", "workers", "batching", "protocol", "payload", "clients", "req/s", "p50 ms",
          "p99 ms", "errors", "mean batch (requests)"]


def _measure(port: int, path: str, body: bytes, headers: dict[str, str], clients: int,
             args: argparse.Namespace) -> tuple[float, float, float, int]:
    lat, errs, elapsed = generate(port, build_request(path, body, headers, port), clients,
                                  args.duration, args.warmup)
    if not lat:
        return 0.0, float("nan"), float("nan"), len(errs)
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else lat * 99
    return len(lat) / elapsed, q[49] * 1e3, q[98] * 1e3, len(errs)


def run(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    bodies = {(p, proto): infer_body(PAYLOADS[p], proto)
              for p in args.payloads for proto in args.protocols}
    for workers in args.workers:
        with server("echo", workers, True) as port:
            for payload, clients in itertools.product(args.payloads, args.clients):
                body, _ = infer_body(PAYLOADS[payload], "binary")
                rps, p50, p99, err = _measure(port, "/echo", body, {}, clients, args)
                rows.append(Row("fastapi echo", workers, "-", "bytes", payload, clients, rps,
                                p50, p99, err, "-"))
                print(" | ".join(rows[-1].cells()), flush=True)
        for batching in args.batching:
            with server("normserve", workers, batching == "on") as port:
                for payload, proto, clients in itertools.product(args.payloads, args.protocols,
                                                                 args.clients):
                    body, headers = bodies[(payload, proto)]
                    before = _scrape(port, workers)
                    rps, p50, p99, err = _measure(port, f"/v2/models/{MODEL}/infer", body,
                                                  headers, clients, args)
                    after = _scrape(port, workers)
                    dr = sum(after[k][0] - before[k][0] for k in after if k in before)
                    de = sum(after[k][1] - before[k][1] for k in after if k in before)
                    batch = f"{dr / de:.2f}" if de else "n/a"
                    rows.append(Row("normserve", workers, batching, f"v2 {proto}", payload,
                                    clients, rps, p50, p99, err, batch))
                    print(" | ".join(rows[-1].cells()), flush=True)
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def targets(rows: list[Row]) -> list[str]:
    """The issue's targets, checked on whatever part of the matrix was run."""
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
        if b == "on":
            notes.append(f"- {proto} {payload}, {w} worker(s), 32 clients: p99/p50 = "
                         f"{r.p99_ms / r.p50_ms:.2f} (target <= 3): "
                         f"{'met' if r.p99_ms <= 3 * r.p50_ms else 'NOT met'}")
            off = idx.get((srv, w, "off", proto, payload, c))
            if off:
                notes.append(f"- {proto} {payload}, {w} worker(s), 32 clients: batching on "
                             f"{r.rps:.0f} vs off {off.rps:.0f} req/s")
    return notes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m normserve.service.loadbench",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32, 128])
    p.add_argument("--payloads", nargs="+", choices=list(PAYLOADS), default=list(PAYLOADS))
    p.add_argument("--protocols", nargs="+", choices=("binary", "json"),
                   default=["binary", "json"])
    p.add_argument("--batching", nargs="+", choices=("on", "off"), default=["on", "off"])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per cell")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of load before each cell")
    p.add_argument("--output", default="bench-results/loadbench.md")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 and 8 clients, one row, binary, batching on, 1 worker")
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.payloads, args.protocols = [1, 8], ["1x1024"], ["binary"]
        args.batching, args.workers, args.duration, args.warmup = ["on"], [1], 1.0, 0.3
    rows = run(args)
    text = (f"Load benchmark (`python -m normserve.service.loadbench`), {os.cpu_count()} CPU(s), "
            f"{args.duration:g} s per cell, load generator on the same machine.\n\n"
            + table(rows) + "\n\n" + "\n".join(targets(rows)) + "\n")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print("\n" + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
