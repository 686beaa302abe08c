"""The load benchmark (``python -m normserve.service.loadbench``): its ``--quick`` smoke run
end to end over every quick mode (HTTP binary, gRPC, system shared memory over gRPC and over
HTTP), kept short; the request builders; the targets it checks; and the Triton anchor skipping
cleanly when nvidia-pytriton is absent."""

from __future__ import annotations

import argparse
import os

import numpy as np
import orjson
import pytest
from tritonclient.grpc import service_pb2

from normserve.service import loadbench as lb


def _table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.timeout(600)
def test_quick_run_covers_every_quick_mode(tmp_path, capsys):
    out = tmp_path / "loadbench.md"
    before = set(os.listdir("/dev/shm"))
    assert lb.main(["--quick", "--duration", "0.3", "--warmup", "0.1", "--output", str(out)]) == 0
    rows = _table_rows(out.read_text())
    cells = {(r[0], r[3], r[5]): r for r in rows}
    expected = [("fastapi echo", "bytes"), ("grpc echo", "grpc bytes"),
                *(("normserve", lb.MODES[m]) for m in lb.QUICK_MODES)]
    for server, protocol in expected:
        for clients in ("1", "8"):
            row = cells[(server, protocol, clients)]
            assert row[4] == "1x1024" and row[1] == "1", row
            assert float(row[6]) > 0, row  # req/s
            assert row[9] == "0", row  # errors: every answer OK, every output region right
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
    return lb.Row(server, 1, batching, protocol, payload, clients, rps, p50, p99, 0, "1.00")


def test_targets_of_the_new_modes():
    rows = [_row("v2 binary", "1x1024", c, rps) for c, rps in ((8, 5000), (32, 9000),
                                                               (128, 9500))]
    rows += [_row("v2 grpc", "1x1024", c, rps) for c, rps in ((8, 6000), (32, 7000),
                                                              (128, 6500))]
    rows += [_row("v2 binary", "64x1024", 8, 1000), _row("shm grpc", "64x1024", 8, 3500),
             _row("shm http", "64x1024", 8, 2000, p50=1.0, p99=9.0)]
    rows += [_row("shm http", "64x1024", 32, 2100, p50=1.0, p99=9.0)]
    notes = "\n".join(lb.targets(rows))
    assert "v2 grpc 1x1024, 1 worker(s), 32 clients: 0.78x normserve's HTTP v2 binary" in notes
    assert "(7000 vs 9000, target >= 0.8): NOT met" in notes
    assert "shm grpc 64x1024, 1 worker(s), 8 clients: 3.50x" in notes
    assert "(3500 vs 1000, target >= 3): met" in notes
    assert "shm http 64x1024, 1 worker(s), 8 clients: 2.00x" in notes
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


def test_anchor_skips_with_a_reason_when_pytriton_is_absent(monkeypatch, capsys):
    monkeypatch.setattr(lb, "triton_missing", lambda python: "nvidia-pytriton is not installed")
    emitted = []
    args = argparse.Namespace(modes=list(lb.MODES), payloads=["1x1024"], clients=[1],
                              duration=0.1, warmup=0.0, anchor_python=None)
    lb.run_anchor(args, emitted.append)
    assert not emitted
    assert "skipped: the Triton anchor: nvidia-pytriton is not installed" in \
        capsys.readouterr().out
    assert args.skipped == ["the Triton anchor: nvidia-pytriton is not installed"]


def test_anchor_is_reported_missing_without_pytriton():
    import importlib.util

    reason = lb.triton_missing()
    assert (reason is None) == (importlib.util.find_spec("pytriton") is not None)
    if reason:
        assert "nvidia-pytriton" in reason
    assert "cannot run it" in lb.triton_missing("/no/such/python")


def test_anchor_script_compiles():
    compile(lb.TRITON_SCRIPT, "<triton anchor>", "exec")


def test_sample_is_deterministic():
    assert np.array_equal(lb.sample((1, 1024)), lb.sample((1, 1024)))
