"""The load benchmark's perf_analyzer cells (``bench/perf_analyzer.py``): its CSV read from a
real run's report (``perf_analyzer_grpc.csv``: perf_analyzer 2.41.0, gRPC, 8 clients, against
``normserve serve``), the command of each mode, finding the binary (skipped, saying how to
install it, when ``$PERF_ANALYZER`` is unset or does not run), the targets (gRPC against the
grpc.aio echo, req/s by workers) and ``--workers auto``. Marked slow: cells against a real
``normserve serve`` and the echo, skipped with the reason when ``$PERF_ANALYZER`` is not set
(``eval "$(../shared/tools/perf-analyzer.sh)"`` sets it)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest

from normserve.bench import load as lb
from normserve.bench import perf_analyzer as pa

REAL_CSV = Path(__file__).with_name("perf_analyzer_grpc.csv")


def test_csv_of_a_real_run():
    (result,) = pa.parse_csv(REAL_CSV.read_text())
    assert result["Concurrency"] == 8 and result["Inferences/Second"] == 2496.38
    assert (result["p50 latency"], result["p99 latency"]) == (3072, 6505)  # microseconds
    # 2 s at 2496.38 req/s: 4992.76 answers; the server used 1 s of CPU, perf_analyzer 0.25.
    cell = pa.to_cell(result, 2.0, 1.0, 0.25)
    assert cell.rps == 2496.38 and cell.errors == 0
    assert (cell.p50_ms, cell.p99_ms) == pytest.approx((3.072, 6.505))
    assert cell.cpu_us == pytest.approx(1e6 / 4992.76)
    assert cell.gen_us == pytest.approx(0.25e6 / 4992.76)
    # perf_analyzer counts inferences: with -b 64 each request is 64 of them.
    blocks = pa.to_cell(result, 2.0, 1.0, 0.25, rows=64)
    assert blocks.rps == pytest.approx(2496.38 / 64) and blocks.p50_ms == cell.p50_ms
    assert blocks.cpu_us == pytest.approx(cell.cpu_us * 64)


def test_csv_without_its_columns_is_refused():
    with pytest.raises(ValueError, match="not a perf_analyzer CSV"):
        pa.parse_csv("Concurrency,Throughput\n8,100\n")
    header = REAL_CSV.read_text().splitlines()[0]
    with pytest.raises(ValueError, match="no measured row"):
        pa.parse_csv(header + "\n")


@pytest.mark.parametrize(("mode", "protocol", "port", "extra"), [
    ("pa-http", "http", 8000, []),
    ("pa-grpc", "grpc", 8001, []),
    ("pa-grpc-stream", "grpc", 8001, ["--streaming"]),
    ("pa-shm", "grpc", 8001, ["--shared-memory", "system", "--output-shared-memory-size",
                              "4096"]),
])
def test_command_of_each_mode(mode, protocol, port, extra):
    cmd = pa.command("/pa", mode, port, 64, 32, 1667, "/tmp/x.csv", stability=25, max_trials=10)
    assert cmd == ["/pa", "-m", "layer_norm_1024", "-u", f"127.0.0.1:{port}", "-i", protocol,
                   "-b", "64", "--concurrency-range", "32:32", "--measurement-interval", "1667",
                   "--stability-percentage", "25", "--max-trials", "10", "-f", "/tmp/x.csv",
                   *extra]


def test_command_refuses_other_modes():
    with pytest.raises(ValueError, match="not a perf_analyzer mode"):
        pa.command("/pa", "grpc", 8001, 1, 1, 100, "x.csv")


def test_missing_or_broken_binary_says_how_to_install(tmp_path):
    path, why = pa.find({})
    assert path is None and "$PERF_ANALYZER is not set" in why and "perf-analyzer.sh" in why
    path, why = pa.find({"PERF_ANALYZER": str(tmp_path / "nope")})
    assert path is None and "does not run" in why and "perf-analyzer.sh" in why
    path, why = pa.find({"PERF_ANALYZER": "/bin/false"})
    assert path is None and "exit 1" in why


def test_without_perf_analyzer_its_modes_are_skipped(monkeypatch, capsys):
    monkeypatch.delenv("PERF_ANALYZER", raising=False)
    args = lb.parse_args(["--modes", "grpc", "pa-grpc", "pa-shm"])
    lb._find_perf_analyzer(args)
    assert args.modes == ["grpc"]
    assert "(skipped: pa-grpc, pa-shm: $PERF_ANALYZER is not set" in capsys.readouterr().out


def test_a_failed_run_says_how(tmp_path):
    with pytest.raises(pa.Failed, match=r"perf_analyzer exit 3: boom"):
        pa.run_once(["sh", "-c", "echo boom; exit 3", "-f", str(tmp_path / "x.csv")], 30)
    with pytest.raises(pa.Failed, match=r"killed after 0 s"):
        pa.run_once(["sh", "-c", "exec sleep 30", "-f", str(tmp_path / "x.csv")], 0.2)


def _row(server: str, workers: int, protocol: str, clients: int, rps: float, cpu: float = 200.0,
         gen: float = 50.0, batching: str = "on") -> lb.Row:
    return lb.Row(server, workers, batching, protocol, "1x1024", clients, rps, 1.0, 2.0, 0,
                  "-", cpu, gen)


def test_targets_against_the_grpc_echo_and_by_workers():
    rows = [_row("grpc echo", 1, "pa grpc bytes", 32, 5000, batching="-"),
            _row("grpc echo", 1, "pa grpc stream bytes", 32, 10000, batching="-"),
            _row("normserve", 1, "pa grpc", 32, 4600), _row("normserve", 1, "pa grpc stream", 32,
                                                            8000),
            _row("normserve", 2, "pa grpc", 32, 6000), _row("normserve", 1, "pa http", 32, 8000),
            _row("normserve", 2, "pa http", 32, 7000), _row("normserve", 1, "pa http", 1, 3000),
            _row("normserve", 2, "pa http", 1, 2000)]
    notes = "\n".join(lb.targets(rows, cores=2))
    assert ("- pa grpc 1x1024, 1 worker(s), 32 clients: 0.92x the bare grpc.aio echo under "
            "perf_analyzer (4600 vs 5000 req/s; normserve: server 0.92 core(s), generator 0.23; "
            "echo: server 1.00 core(s), generator 0.25) (target >= 0.9): met") in notes
    assert "pa grpc stream 1x1024, 1 worker(s), 32 clients: 0.80x" in notes
    assert "(target >= 0.9): NOT met" in notes
    assert ("- normserve pa grpc 1x1024, 32 clients, req/s by workers 1: 4600 (server 0.92 "
            "core(s), generator 0.23) -> 2: 6000 (server 1.20 core(s), generator 0.30) "
            "(target: grows): met") in notes
    assert "normserve pa http 1x1024, 32 clients, req/s by workers 1: 8000" in notes
    assert "6000 (server 1.20 core(s), generator 0.30) (target: grows): met" in notes
    assert "-> 2: 7000 (server 1.40 core(s), generator 0.35) (target: grows): NOT met" in notes
    assert "1 clients" not in notes  # one client is not expected to grow with workers


def test_workers_auto_is_what_serve_starts(monkeypatch):
    monkeypatch.setenv("NORMSERVE_CPUS", "3")
    args = lb.parse_args(["--workers", "1", "auto", "3"])
    assert args.workers == [1, 3]
    assert args.auto_workers.startswith("--workers auto is 3 here")
    with pytest.raises(SystemExit):
        lb.parse_args(["--workers", "0"])


def test_the_echo_names_its_perf_analyzer_rows():
    echo = lb.Contender("grpc echo", 1, "-", ["grpc", "pa-grpc"], lb.Ports(1), echo=True)
    assert [echo.protocol(m) for m in (lb.ECHO, "grpc", "pa-grpc", "pa-grpc-stream")] == [
        "bytes", "grpc bytes", "pa grpc bytes", "pa grpc stream bytes"]


# --- against real servers ---
_BINARY, _WHY = pa.find()
needs_pa = pytest.mark.skipif(_BINARY is None, reason=f"perf_analyzer not available: {_WHY}")


def _args() -> argparse.Namespace:
    return argparse.Namespace(perf_analyzer=_BINARY, duration=0.6,
                              pa_stability=100)


def _check(cell: lb.Cell) -> None:
    assert cell.rps > 0 and cell.errors == 0, cell
    assert 0 < cell.p50_ms <= cell.p99_ms, cell
    assert cell.cpu_us > 0 and cell.gen_us > 0, cell


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_pa
def test_cells_against_normserve_serve():
    with lb.server("normserve", 1, True) as ports:
        for mode in ("pa-http", "pa-grpc", "pa-grpc-stream"):
            _check(pa.measurer(mode, ports, 1, _args())(4))
        _check(pa.measurer("pa-grpc", ports, 64, _args())(2))


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_pa
@pytest.mark.parametrize("echo", ["grpc-echo", "grpc-kernel-echo"])
def test_cells_against_the_grpc_echoes(echo):
    with lb.server(echo, 1, True) as ports:
        for mode in pa.ECHO_MODES:
            _check(pa.measurer(mode, ports, 1, _args())(4))


def test_the_kernel_echo_answers_the_layer_norm_of_its_rows():
    """The kernel echo's answer is the layer norm of the posted rows (float64 reference), in
    the shape asked: it does the work it stands for."""
    from tritonclient.grpc import service_pb2

    from normserve import kernels

    layer = kernels.prepare("layer_norm", {}, normalized_shape=[pa.FEATURES])
    x = np.random.default_rng(0).standard_normal((3, pa.FEATURES)).astype(np.float32) * 5 + 2
    request = service_pb2.ModelInferRequest(model_name="layer_norm_1024", id="7")
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    reply = lb.grpc_kernel_reply(layer)(request)
    assert reply.id == "7" and list(reply.outputs[0].shape) == [3, pa.FEATURES]
    y = np.frombuffer(reply.raw_output_contents[0], np.float32).reshape(x.shape)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(1, keepdims=True)) / np.sqrt(x64.var(1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_targets_name_the_kernel_echo():
    rows = [_row("grpc echo", 1, "pa grpc bytes", 1, 2600, batching="-"),
            _row("grpc kernel echo", 1, "pa grpc bytes", 1, 2500, batching="-"),
            _row("normserve", 1, "pa grpc", 1, 2250)]
    notes = "\n".join(lb.targets(rows, cores=2))
    assert "1 clients: 0.87x the bare grpc.aio echo" in notes
    assert ("  - the kernel echo (the echo that also runs the layer norm): 0.96x the echo; "
            "normserve 0.90x the kernel echo (2500 req/s; server 0.50 core(s), generator "
            "0.12)") in notes


@pytest.mark.slow
@pytest.mark.timeout(300)
@needs_pa
def test_shared_memory_cell_against_normserve_serve():
    with lb.server("normserve", 1, True, shared_memory=True) as ports:
        _check(pa.measurer("pa-shm", ports, 1, _args())(2))
