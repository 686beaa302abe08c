"""The load benchmark (``python -m normserve.bench.load``): its ``--quick`` smoke run
end to end over every quick mode (HTTP binary, gRPC, system shared memory over gRPC and over
HTTP), kept short; the request builders; the targets it checks, against normserve's own HTTP and
against the best peer; and the peers (``bench/load_peers.py``): KServe's ModelServer run for real
(kserve is a test dependency), answers checked against NumPy, and missing or wrong peers
skipped, saying why. The runs that start servers or drive the app for a while (the quick run,
the KServe peer, the app benchmark) are marked slow: ``pytest -m slow`` runs them; the
default run has the rest."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re

import httpx
import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2

from normserve.bench import load as lb
from normserve.bench import load_peers as lbp


def _table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_quick_run_covers_every_quick_mode(tmp_path, capsys):
    out = tmp_path / "loadbench.md"
    before = set(os.listdir("/dev/shm"))
    assert lb.main(["--quick", "--duration", "0.3", "--warmup", "0.1", "--output", str(out)]) == 0
    rows = _table_rows(out.read_text())
    cells = {(r[0], r[3], r[5]): r for r in rows}
    expected = [("fastapi echo", "bytes"), ("asgi echo", "bytes"), ("grpc echo", "grpc bytes"),
                ("grpc kernel echo", "grpc bytes"),
                *(("normserve", lb.MODES[m]) for m in lb.QUICK_MODES)]
    for server, protocol in expected:
        for clients in ("1", "8"):
            row = cells[(server, protocol, clients)]
            assert row[4] == "1x1024" and row[1] == "1", row
            assert float(row[6]) > 0, row  # req/s
            assert row[9] == "0", row  # errors: every answer OK, every output region right
            assert float(row[11]) > 0, row  # the server's CPU per answer, us
            assert float(row[12]) > 0, row  # the load generator's own, us
            if server == "normserve":
                assert float(row[10]) >= 1.0, row  # mean batch, scraped from /metrics
    assert len(rows) == 2 * len(expected)
    # Every region the shared-memory cells made is gone again.
    assert not {n for n in set(os.listdir("/dev/shm")) - before if n.startswith("nsbench-")}
    assert "| normserve | 1 | on | shm grpc | 1x1024 | 8 |" in capsys.readouterr().out


def test_grpc_requests_carry_data_or_name_regions():
    plain = service_pb2.ModelInferRequest.FromString(lb.grpc_request((64, 1024)))
    assert plain.model_name == lb.MODEL and list(plain.inputs[0].shape) == [64, 1024]
    assert plain.inputs[0].name == "input" and plain.inputs[0].datatype == "FP32"
    assert len(plain.raw_input_contents[0]) == 64 * 1024 * 4
    shm = service_pb2.ModelInferRequest.FromString(lb.grpc_request((1, 1024), ("in", "out")))
    assert not shm.raw_input_contents
    for tensor, region in ((shm.inputs[0], "in"), (shm.outputs[0], "out")):
        assert tensor.parameters["shared_memory_region"].string_param == region
        assert tensor.parameters["shared_memory_byte_size"].int64_param == 4096


def test_http_shared_memory_body():
    body, headers = lb.shm_body((1, 1024), "in", "out", 4096)
    assert headers == {"Content-Type": "application/json"}
    assert orjson.loads(body) == {
        "inputs": [{"name": "input", "shape": [1, 1024], "datatype": "FP32",
                    "parameters": {"shared_memory_region": "in",
                                   "shared_memory_byte_size": 4096}}],
        "outputs": [{"name": "output", "parameters": {"shared_memory_region": "out",
                                                      "shared_memory_byte_size": 4096}}]}


def _row(protocol: str, payload: str, clients: int, rps: float, p50: float = 1.0,
         p99: float = 2.0, server: str = "normserve", batching: str = "on") -> lb.Row:
    return lb.Row(server, 1, batching, protocol, payload, clients, rps, p50, p99, 0, "1.00",
                  100.0, 300.0)


def test_targets_of_the_new_modes():
    rows = [_row("v2 binary", "1x1024", c, rps) for c, rps in ((8, 5000), (32, 9000),
                                                               (128, 9500))]
    rows += [_row("v2 grpc", "1x1024", c, rps) for c, rps in ((8, 6000), (32, 7000),
                                                              (128, 6500))]
    rows += [_row("v2 binary", "64x1024", 8, 1000), _row("shm grpc", "64x1024", 8, 3500),
             _row("shm http", "64x1024", 8, 2000, p50=1.0, p99=9.0)]
    rows += [_row("shm http", "64x1024", 32, 2100, p50=1.0, p99=9.0)]
    notes = "\n".join(lb.targets(rows, cores=2))
    assert "v2 grpc 1x1024, 1 worker(s), 32 clients: 0.78x normserve's HTTP v2 binary" in notes
    # 0.8 x 9000 = 7200 req/s on 2 cores: 278 us of CPU per answer, less the generator's 300.
    assert "(7000 vs 9000, target >= 0.8): NOT met; 7200 req/s is past what 2 core(s) give " \
           "the load generator alone (300 us of CPU per answer)" in notes
    assert "shm grpc 64x1024, 1 worker(s), 8 clients: 3.50x" in notes
    assert "(3500 vs 1000, target >= 3): met" in notes
    # 3 x 1000 = 3000 req/s on 2 cores: 667 us per answer, 367 after the generator's 300.
    assert "shm http 64x1024, 1 worker(s), 8 clients: 2.00x normserve's HTTP v2 binary req/s " \
           "(2000 vs 1000, target >= 3): NOT met; on 2 core(s), with the load generator's " \
           "300 us of CPU per answer, 3000 req/s leaves the server at most 367 us per answer " \
           "(it used 100, 0.20 core(s) busy)" in notes
    assert "v2 binary 1x1024, 1 worker(s): req/s by clients 5000 (8) -> 9000 (32) -> 9500 " \
           "(128) (target: never falls): met" in notes
    assert "v2 grpc 1x1024, 1 worker(s): req/s by clients 6000 (8) -> 7000 (32) -> 6500 " \
           "(128) (target: never falls): NOT met" in notes
    assert "shm http 64x1024, 1 worker(s), 32 clients: p99/p50 = 9.00 (target <= 3): " \
           "NOT met" in notes
    assert "v2 grpc 1x1024, 1 worker(s), 32 clients: p99/p50 = 2.00 (target <= 3): met" in notes


def test_targets_leave_out_what_was_not_run():
    notes = lb.targets([_row("v2 grpc", "1x1024", 32, 7000), _row("shm grpc", "64x1024", 8, 1)])
    assert not [n for n in notes if "HTTP v2 binary" in n or "never falls" in n]


def _peer_row(server: str, protocol: str, payload: str, clients: int, rps: float) -> lb.Row:
    return lb.Row(server, 1, "on", protocol, payload, clients, rps, 1.0, 2.0, 0, "-", 500.0)


def test_targets_against_the_best_peer():
    rows = [_row("v2 binary", "1x1024", c, rps) for c, rps in ((1, 3000), (8, 6000), (32, 6000),
                                                               (128, 6000))]
    rows += [_row("v2 grpc", "1x1024", 32, 2400), _row("v2 grpc", "64x1024", 32, 700)]
    rows += [_peer_row("triton (pytriton 0.7.0)", "v2 binary", "1x1024", c, rps)
             for c, rps in ((1, 300), (8, 1000), (32, 1500), (128, 1000))]
    rows += [_peer_row("kserve 0.21.0", "v2 binary", "1x1024", c, rps)
             for c, rps in ((1, 1100), (8, 1300), (32, 1200))]
    rows += [_peer_row("kserve 0.21.0", "v2 grpc", "1x1024", 32, 1000),
             _peer_row("mlserver 1.7.1", "v2 grpc", "1x1024", 32, 1500),
             _peer_row("mlserver 1.7.1", "v2 grpc", "64x1024", 32, 100)]
    notes = "\n".join(lb.targets(rows, cores=4))
    assert "- v2 binary 1x1024, 1 clients: normserve 3000 req/s, 2.73x the best peer, kserve " \
           "0.21.0 (1100; of triton (pytriton 0.7.0), kserve 0.21.0) (target >= 3): NOT met; " \
           "on 4 core(s), with the load generator's 300 us of CPU per answer, 3300 req/s " \
           "leaves the server at most 912 us per answer (it used 100, 0.30 core(s) busy)" in notes
    assert "- v2 binary 1x1024, 32 clients: normserve 6000 req/s, 4.00x the best peer, triton " \
           "(pytriton 0.7.0) (1500; of triton (pytriton 0.7.0), kserve 0.21.0) (target >= 3): " \
           "met\n" in notes
    assert "- v2 grpc 1x1024, 32 clients: normserve 2400 req/s, 1.60x the best peer, mlserver " \
           "1.7.1 (1500; of kserve 0.21.0, mlserver 1.7.1) (target >= 2): NOT met" in notes
    # No target past 32 clients, nor for gRPC 64x1024; the cell by cell lines stay.
    assert "128 clients: normserve" not in notes and "64x1024, 32 clients: normserve 700" \
        not in notes
    assert "- v2 grpc 64x1024, 1 worker, 32 clients: normserve 700 vs mlserver 1.7.1 100 req/s " \
           "(7.00x); server CPU per request 100 vs 500 us (5.00x less)" in notes
    assert "- v2 binary 1x1024, 1 worker, 32 clients: normserve 6000 vs kserve 0.21.0 1200 " \
           "req/s (5.00x); server CPU per request 100 vs 500 us (5.00x less)" in notes


def test_missing_peers_are_skipped_with_a_reason(capsys):
    # Modes that need no perf_analyzer: its skip line (when $PERF_ANALYZER is unset) is not
    # this test's business.
    args = lb.parse_args(["--modes", "http-binary", "grpc", "--peers", "kserve", "triton",
                          "--peer-python", "kserve=/no/such/python", "--peer-python",
                          "triton=/no/such/python"])
    assert not lb.run_peers(args)
    assert args.skipped == [
        "the kserve peer: --peer-python kserve=/no/such/python: cannot run it ("
        "[Errno 2] No such file or directory: '/no/such/python')",
        "the triton peer: --peer-python triton=/no/such/python: cannot run it ("
        "[Errno 2] No such file or directory: '/no/such/python')"]
    assert "(skipped: the kserve peer: --peer-python kserve=/no/such/python: cannot run it" \
        in capsys.readouterr().out


def test_a_peer_is_reported_missing_from_this_interpreter():
    import importlib.util

    for name, peer in lbp.PEERS.items():
        if importlib.util.find_spec(peer.module) is None:
            with pytest.raises(lbp.PeerMissing, match=f"{peer.dist} is not installed in this "
                               "interpreter .pip install"):
                lbp.installed(name)
        else:
            assert lbp.installed(name)[0].isdigit()


def test_peer_python_names_a_peer():
    args = lb.parse_args(["--peer-python", "kserve=/a/python", "--peer-python", "mlserver=/b"])
    assert args.peer_python == {"kserve": "/a/python", "mlserver": "/b"}
    for bad in ("kserve", "onnx=/a/python", "kserve="):
        with pytest.raises(SystemExit):
            lb.parse_args(["--peer-python", bad])


def test_a_peer_answering_wrong_is_not_measured(monkeypatch, capsys):
    """A wrong answer skips that mode loudly (the peer's other modes still run)."""
    @contextlib.contextmanager
    def fake_server(kind, workers, batching, python=None):
        yield lb.Ports(1, 2, 3)

    monkeypatch.setattr(lb, "installed", lambda name, python=None: "9.9")
    monkeypatch.setattr(lb, "server", fake_server)
    monkeypatch.setattr(lb, "wrong_answer", lambda mode, ports, payload: "max |error| 1")
    args = lb.parse_args(["--peers", "mlserver", "--modes", "http-binary", "http-json",
                          "--payloads", "1x1024"])
    assert not lb.run_peers(args)  # nothing measured
    assert args.skipped == [
        "mlserver 9.9, v2 binary: no binary tensor extension over HTTP (a binary request gets "
        "500)",
        "mlserver 9.9, v2 json 1x1024: WRONG ANSWER, not measured (max |error| 1)"]
    assert "WRONG ANSWER" in capsys.readouterr().out


def test_answers_are_checked_against_numpy(monkeypatch):
    ports = lb.Ports(1, 2)
    right = lbp.reference(lb.sample((1, 1024)))
    monkeypatch.setattr(lb, "_answer", lambda mode, ports, shape: right)
    assert lb.wrong_answer("grpc", ports, "1x1024") is None
    monkeypatch.setattr(lb, "_answer", lambda mode, ports, shape: right + 1e-2)
    assert lb.wrong_answer("grpc", ports, "1x1024") == "max |error| 0.01 against NumPy"
    monkeypatch.setattr(lb, "_answer", lambda mode, ports, shape: right.ravel())
    assert lb.wrong_answer("grpc", ports, "1x1024") == "output shape (1024,), want (1, 1024)"

    def refused(mode, ports, shape):
        raise httpx.ConnectError("refused")

    monkeypatch.setattr(lb, "_answer", refused)
    assert lb.wrong_answer("http-json", ports, "1x1024") == "no answer: ConnectError('refused')"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_kserve_peer_answers_right_and_is_measured():
    """KServe's ModelServer with this interpreter (kserve is a test dependency), through the
    benchmark's own path: its answer to each mode's request checked against NumPy, then a
    short cell per mode; shared memory is skipped, saying why."""
    args = lb.parse_args(["--peers", "kserve", "--modes", "http-binary", "http-json", "grpc",
                          "shm-grpc", "--payloads", "1x1024", "--clients", "2", "--duration",
                          "0.2", "--warmup", "0"])
    rows = lb.run_peers(args)
    assert args.skipped == [f"kserve {lbp.installed('kserve')}, shm grpc: no system "
                            "shared-memory extension"]
    assert [r.protocol for r in rows] == ["v2 binary", "v2 json", "v2 grpc"]
    for r in rows:
        assert r.server.startswith("kserve ") and r.batching == "off" and r.batch == "-", r
        assert r.rps > 0 and r.errors == 0, r


def test_chunked_replies_are_read_to_their_end():
    async def read(data: bytes, head: bytes) -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        await lb._read_chunks(reader, head)
        return await reader.read()

    chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    body = b"4\r\nabcd\r\n2;x=y\r\nef\r\n0\r\n\r\n"
    assert asyncio.run(read(body + b"NEXT", chunked)) == b"NEXT"
    assert asyncio.run(read(b"NEXT", b"HTTP/1.1 204 No Content\r\n\r\n")) == b"NEXT"


def test_mean_batch_from_each_servers_metrics(monkeypatch):
    """Triton's counters, and MLServer's: its request counter has one series per version label
    (REST "None", gRPC ""), and its peer script counts batches under Triton's name."""
    labels = '{model="layer_norm_1024",version="None"}'
    texts = {
        (40.0, 10.0): f"nv_inference_request_success{labels} 40\n"
                      f"nv_inference_exec_count{labels} 10\n",
        (40.0, 20.0): f"model_infer_request_success_total{labels} 30\n"
                      f"model_infer_request_success_created{labels} 9\n"
                      'model_infer_request_success_total{model="layer_norm_1024",version=""} 10\n'
                      'nv_inference_exec_count_total{model="layer_norm_1024"} 20.0\n'}
    for counts, text in texts.items():
        monkeypatch.setattr(httpx, "get", lambda url, timeout, text=text: httpx.Response(
            200, text=text))
        assert lb._scrape(lb.Ports(1), 1) == {"?": counts}


def test_peer_scripts_compile():
    for name, peer in lbp.PEERS.items():
        compile(peer.script, f"<{name} peer>", "exec")
        assert "normserve" not in peer.script  # it runs in the peer's own virtualenv


def test_setup_makes_one_pinned_venv_per_peer(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(lbp.subprocess, "run", lambda cmd, check: calls.append(cmd))
    monkeypatch.setattr(lbp, "installed", lambda name, python: "1.0")
    assert lbp.main(["setup", str(tmp_path)]) == 0
    pythons = {name: str(tmp_path / name / "bin" / "python") for name in lbp.PEERS}
    assert calls[1::2] == [
        [pythons["triton"], "-m", "pip", "install", "--quiet", "nvidia-pytriton==0.7.0", "numpy<2"],
        [pythons["kserve"], "-m", "pip", "install", "--quiet", "kserve==0.21.0"],
        [pythons["mlserver"], "-m", "pip", "install", "--quiet", "mlserver==1.7.1"]]
    assert calls[0][-3:] == ["-m", "venv", str(tmp_path / "triton")]
    assert ("python -m normserve.bench.load --peers triton kserve mlserver "
            + " ".join(f"--peer-python {n}={p}" for n, p in pythons.items())) \
        in capsys.readouterr().out


def test_sample_is_deterministic():
    assert np.array_equal(lb.sample((1, 1024)), lb.sample((1, 1024)))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_appbench_drives_the_app_in_process(capsys):
    """The in-process benchmark (bench/app.py) answers every request (HTTP 200; over gRPC an
    answer carrying the tensor) and reports a rate and a CPU cost per request for each mode,
    and for the gRPC echo's handler beside gRPC."""
    from normserve.bench import app as appbench

    assert appbench.main(["--duration", "0.3", "--repeat", "1", "--clients", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    for mode in ("v2 binary", "v2 json", "v2 grpc", "grpc echo handler"):
        line = next(x for x in lines if x.startswith(f"{mode} 1x1024, 4 callers: "))
        rate, cpu = (float(v) for v in re.findall(r"([\d.]+) (?:req/s|us CPU)", line))
        assert rate > 0 and cpu > 0 and line.endswith(", 0 failed"), line


def test_a_peer_failing_mid_run_is_skipped_and_the_run_goes_on(monkeypatch, capsys):
    """A peer whose measurement raises (it died) is skipped from then on, saying why; the cells
    it already gave stay."""
    @contextlib.contextmanager
    def fake_server(kind, workers, batching, python=None):
        yield lb.Ports(1, 2, 3)

    calls = []

    @contextlib.contextmanager
    def fake_driver(mode, ports, payload, args, input_name="x"):
        def measure(clients):
            calls.append(clients)
            if clients == 8:
                raise ConnectionRefusedError("gone")
            return lb.Cell(100.0, 1.0, 2.0, 0, 50.0, 80.0)
        yield measure

    monkeypatch.setattr(lb, "installed", lambda name, python=None: "9.9")
    monkeypatch.setattr(lb, "server", fake_server)
    monkeypatch.setattr(lb, "driver", fake_driver)
    monkeypatch.setattr(lb, "wrong_answer", lambda mode, ports, payload: None)
    args = lb.parse_args(["--peers", "kserve", "--modes", "http-binary", "grpc", "--payloads",
                          "1x1024", "--clients", "1", "8", "32"])
    rows = lb.run_peers(args)
    assert [(r.protocol, r.clients) for r in rows] == [("v2 binary", 1)]
    assert calls == [1, 8]  # nothing more asked of it once it failed
    assert args.skipped == ["kserve 9.9 failed: ConnectionRefusedError: gone"]
    assert "kserve 9.9 failed" in capsys.readouterr().out
