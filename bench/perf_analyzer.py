"""The load benchmark's cells measured with Triton's own load generator, ``perf_analyzer``
(C++), beside the Python generators of ``bench/load.py``: what Triton users measure with, so
that the Python client's own cost (a ``grpc.aio`` client spends about as much CPU per call as
the server) stops hiding the server's.

The modes (``python -m normserve.bench.load --modes pa-http pa-grpc pa-grpc-stream pa-shm``):
v2 over HTTP (perf_analyzer sends binary tensors), v2 over gRPC (unary ``ModelInfer``), v2
over gRPC ``--streaming`` (one ``ModelStreamInfer`` stream per client) and system shared
memory over gRPC (one worker only, as the server requires). The gRPC modes also run against the
bare ``grpc.aio`` echo, the gRPC ceiling. perf_analyzer keeps ``clients`` requests in flight
(``--concurrency-range N:N``, one synchronous thread each), measures windows of a third of
``--duration`` until the last three agree within ``--pa-stability`` percent and reports their
mean req/s and latency percentiles, here read from its ``-f`` CSV. Around its run the server's
CPU (all its processes) and perf_analyzer's own (``wait4``'s rusage of the child) are read,
each divided by the answers of the run (req/s x seconds), so each cell says what part of the
shared cores each side used.

perf_analyzer is found through ``$PERF_ANALYZER``; without it (or when the binary does not
run) the cells are skipped, saying how to install it (``INSTALL``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # load imports this module: its types only for the checker
    import argparse

    from .load import Cell, Ports, Row

ENV = "PERF_ANALYZER"
INSTALL = ('eval "$(../shared/tools/perf-analyzer.sh)" from the repository root (it extracts '
           "perf_analyzer from the tritonclient 2.41.0 wheel, with Debian's libb64-0d and the "
           "nvidia-cuda-runtime-cu12 wheel), or set $PERF_ANALYZER to a perf_analyzer binary")
#: mode -> the protocol column of the table.
MODES = {"pa-http": "pa http", "pa-grpc": "pa grpc", "pa-grpc-stream": "pa grpc stream",
         "pa-shm": "pa shm grpc"}
#: The Python generators' mode sending the same wire format (a peer's unsupported modes).
BASE = {"pa-http": "http-binary", "pa-grpc": "grpc", "pa-grpc-stream": "grpc",
        "pa-shm": "shm-grpc"}
#: What the bare grpc.aio echo (the gRPC ceiling) is also driven with.
ECHO_MODES = ("pa-grpc", "pa-grpc-stream")
FEATURES = 1024  # the demo model's row (layer_norm_1024), FP32
#: perf_analyzer's stability check (-s, percent) and most windows (-r) by default; its own
#: default, 10 %, seldom holds on a shared 2-core machine, and without a stable result it
#: reports nothing.
STABILITY, MAX_TRIALS = 25, 10


def find(env: dict[str, str] | None = None) -> tuple[str | None, str]:
    """(the perf_analyzer binary, "") when ``$PERF_ANALYZER`` names one that runs, else
    (None, why not and how to install it)."""
    path = (os.environ if env is None else env).get(ENV, "")
    if not path:
        return None, f"${ENV} is not set; to install perf_analyzer: {INSTALL}"
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"${ENV}={path} does not run ({exc}); {INSTALL}"
    if done.returncode:
        tail = (done.stderr or done.stdout).strip()[-300:]
        return None, f"${ENV}={path} does not run (exit {done.returncode}: {tail}); {INSTALL}"
    return path, ""


def command(binary: str, mode: str, port: int, rows: int, clients: int, interval_ms: int,
            csv_path: str, *, stability: int = STABILITY, max_trials: int = MAX_TRIALS,
            model: str = "layer_norm_1024") -> list[str]:
    """perf_analyzer's command line for one cell: ``clients`` requests in flight, each a
    batch of ``rows`` (the model batches: its config gives the row, [1024], and -b the rows)."""
    if mode not in MODES:
        raise ValueError(f"not a perf_analyzer mode: {mode!r} (one of {', '.join(MODES)})")
    cmd = [binary, "-m", model, "-u", f"127.0.0.1:{port}",
           "-i", "http" if mode == "pa-http" else "grpc", "-b", str(rows),
           "--concurrency-range", f"{clients}:{clients}", "--measurement-interval",
           str(interval_ms), "--stability-percentage", str(stability), "--max-trials",
           str(max_trials), "-f", csv_path]
    if mode == "pa-grpc-stream":
        cmd.append("--streaming")
    if mode == "pa-shm":
        # The size of each output region per row of the batch (perf_analyzer multiplies it by
        # -b): one FP32 row.
        cmd += ["--shared-memory", "system", "--output-shared-memory-size", str(FEATURES * 4)]
    return cmd


def parse_csv(text: str) -> list[dict[str, float]]:
    """perf_analyzer's ``-f`` report: one dict per concurrency level, every column a number
    (latencies in microseconds, as it writes them); raises ValueError without its columns."""
    reader = csv.DictReader(io.StringIO(text))
    want = ("Concurrency", "Inferences/Second", "p50 latency", "p99 latency")
    if reader.fieldnames is None or any(k not in reader.fieldnames for k in want):
        raise ValueError(f"not a perf_analyzer CSV (columns {reader.fieldnames}, want {want})")
    out = []
    for row in reader:
        if not row.get("Concurrency"):
            continue
        out.append({k.strip(): float(v) for k, v in row.items() if k and v not in (None, "")})
    if not out:
        raise ValueError("perf_analyzer's CSV has no measured row")
    return out


class Failed(RuntimeError):
    """perf_analyzer exited without a result; the message says how, with its output's end."""


def run_once(cmd: Sequence[str], timeout: float, pids: Sequence[int] = ()
             ) -> tuple[dict[str, float], float, float, float]:
    """Runs perf_analyzer and returns (its CSV's row, seconds it ran, server CPU seconds
    meanwhile, its own CPU seconds: user + system, all its threads)."""
    from .load import server_cpu_s

    csv_path = cmd[cmd.index("-f") + 1]
    with tempfile.TemporaryFile("w+") as log:
        cpu, start = server_cpu_s(pids), time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed, server_s = time.perf_counter() - start, server_cpu_s(pids) - cpu
        own_s = usage.ru_utime + usage.ru_stime
        log.seek(0)
        output = log.read()
    code = proc.returncode
    if code or not os.path.exists(csv_path):
        how = (f"killed after {timeout:.0f} s" if code == -9 else
               f"killed by signal {-code}" if code < 0 else f"exit {code}")
        tail = " / ".join(line.strip() for line in output.strip().splitlines()[-3:])
        raise Failed(f"perf_analyzer {how}: {tail or 'no output'}")
    with open(csv_path) as f:
        return parse_csv(f.read())[-1], elapsed, server_s, own_s


def to_cell(result: dict[str, float], elapsed: float, server_s: float, own_s: float,
            rows: int = 1) -> Cell:
    """The load table's cell: req/s and p50/p99 as perf_analyzer measured them (it counts
    inferences, ``rows`` per request: -b); the CPU of each side per answer over its whole run
    (req/s x the seconds it ran)."""
    from .load import Cell

    rps = result["Inferences/Second"] / rows
    answers = rps * elapsed
    per = (lambda s: s / answers * 1e6) if answers else (lambda s: float("nan"))
    return Cell(rps, result["p50 latency"] / 1e3, result["p99 latency"] / 1e3, 0,
                per(server_s), per(own_s))


def measurer(mode: str, ports: Ports, rows: int, args: argparse.Namespace
             ) -> Callable[[int], Cell]:
    """``measure(clients) -> Cell`` for one mode and payload; raises Failed when
    perf_analyzer gives no result."""
    interval_ms = max(100, round(args.duration * 1000 / 3))
    stability = getattr(args, "pa_stability", STABILITY)
    port = ports.http if mode == "pa-http" else ports.grpc
    timeout = interval_ms / 1000 * (MAX_TRIALS + 2) + 60

    def measure(clients: int) -> Cell:
        before = _shm_names() if mode == "pa-shm" else set()
        with tempfile.TemporaryDirectory(prefix="loadbench-pa-") as scratch:
            cmd = command(args.perf_analyzer, mode, port, rows, clients, interval_ms,
                          os.path.join(scratch, "pa.csv"), stability=stability)
            try:
                return to_cell(*run_once(cmd, timeout, ports.pids), rows=rows)
            except ValueError as exc:  # its CSV
                raise Failed(str(exc)) from None
            except Failed:
                if mode == "pa-shm":  # the regions it made and, dying, did not destroy
                    for name in _shm_names() - before:
                        if name == "output" or name.startswith("input_"):
                            with contextlib.suppress(OSError):
                                os.unlink(f"/dev/shm/{name}")
                raise

    return measure


def _shm_names() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


# --- the targets ---
def _cores(r: Row) -> str:
    """What each side kept busy: req/s x CPU per answer."""
    return (f"server {r.rps * r.cpu_us / 1e6:.2f} core(s), generator "
            f"{r.rps * r.gen_us / 1e6:.2f}")


def targets(rows: Sequence[Row]) -> list[str]:
    """normserve's gRPC under perf_analyzer against the bare grpc.aio echo's (target >= 0.9x),
    and req/s by workers for each protocol (target: grows from 8 clients on), each with what
    part of the cores the server and the load generator used."""
    notes = []
    idx = {(r.server, r.workers, r.batching, r.protocol, r.payload, r.clients): r for r in rows}
    for (srv, w, b, proto, payload, c), r in idx.items():
        if srv != "normserve" or b != "on" or proto not in (MODES[m] for m in ECHO_MODES):
            continue
        echo = idx.get(("grpc echo", w, "-", f"{proto} bytes", payload, c))
        if echo and echo.rps:
            ratio = r.rps / echo.rps
            notes.append(f"- {proto} {payload}, {w} worker(s), {c} clients: {ratio:.2f}x the "
                         f"bare grpc.aio echo under perf_analyzer ({r.rps:.0f} vs "
                         f"{echo.rps:.0f} req/s; normserve: {_cores(r)}; echo: {_cores(echo)}) "
                         f"(target >= 0.9): {'met' if ratio >= 0.9 else 'NOT met'}")
        kernel = idx.get(("grpc kernel echo", w, "-", f"{proto} bytes", payload, c))
        if kernel and kernel.rps and echo and echo.rps:
            notes.append(f"  - the kernel echo (the echo that also runs the layer norm): "
                         f"{kernel.rps / echo.rps:.2f}x the echo; normserve "
                         f"{r.rps / kernel.rps:.2f}x the kernel echo ({kernel.rps:.0f} req/s; "
                         f"{_cores(kernel)})")
    series: dict[tuple, list[Row]] = {}
    for r in rows:
        if r.server == "normserve" and r.batching == "on" and r.clients >= 8:
            series.setdefault((r.protocol, r.payload, r.clients), []).append(r)
    for (proto, payload, c), rs in series.items():
        if len({r.workers for r in rs}) < 2:
            continue
        rs.sort(key=lambda r: r.workers)
        ok = all(a.rps < b.rps for a, b in itertools.pairwise(rs))
        steps = " -> ".join(f"{r.workers}: {r.rps:.0f} ({_cores(r)})" for r in rs)
        notes.append(f"- normserve {proto} {payload}, {c} clients, req/s by workers {steps} "
                     f"(target: grows): {'met' if ok else 'NOT met'}")
    return notes

