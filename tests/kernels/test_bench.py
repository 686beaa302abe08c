"""``normserve bench`` runs end to end on one small case (no timings are asserted: this
machine is shared and noisy); its three normserve columns compute the same bits. Without the
``bench`` extra: tests/bench/test_extra.py."""

from __future__ import annotations

import json

import numpy as np
import pytest

from normserve.bench import kernels as bench

CASE = "rms_norm 256x4096"


@pytest.mark.slow
def test_normserve_columns_agree_bitwise():
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    (case,) = bench.build_cases(1, CASE)
    one_shot, prepared = (case.peers[k]() for k in bench.OURS[:2])
    case.peers[bench.OURS[2]]()
    assert one_shot.tobytes() == prepared.tobytes() == case.out.tobytes()
    torch_y = case.peers["torch"]().numpy()
    np.testing.assert_allclose(prepared, torch_y, rtol=1e-5, atol=1e-5)


def _smoke_rows(tmp_path, only: str, *extra: str) -> list[dict]:
    """``normserve bench`` on one case, two repetitions, one thread: its JSON rows."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    path = tmp_path / "bench.json"
    assert bench.main(["--only", only, "--reps", "2", "--threads", "1", "--idle-ms", "1",
                       "--no-compile-times", "--json", str(path), *extra]) == 0
    return json.loads(path.read_text())["rows"]


@pytest.mark.slow
def test_rows_and_summary_cover_every_mode_and_column(tmp_path):
    rows = _smoke_rows(tmp_path, CASE)
    timed = [r for r in rows if r["speedup_vs_fastest_peer"] is not None]
    assert {(r["mode"], r["impl"]) for r in timed} >= {
        (m, k) for m in bench.MODES for k in (*bench.OURS, "numpy", "torch", "onnxruntime")}
    assert all(r["median_ms"] > 0 and r["case"] == CASE for r in timed)
    summary = bench.format_summary(rows).splitlines()
    assert all(k in summary[0] for k in bench.OURS)
    assert [line.split(" | ")[1] for line in summary[2:]] == list(bench.MODES)


@pytest.mark.slow
@pytest.mark.parametrize("case_name", ["add_rms_norm 256x4096", "add_layer_norm 8192x1024"])
def test_fused_cases_compute_the_same_block_in_every_column(case_name):
    """Both outputs of every column: normserve's three calls bitwise, its unfused pair and
    torch's x + r then norm close; ORT's fused contrib node and standard Add + norm graph run."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    (case,) = bench.build_cases(1, case_name)
    assert case.bytes >= 4 * case.inputs[0].nbytes  # 2 read + 2 written
    one_shot, prepared = (case.peers[k]() for k in bench.OURS[:2])
    case.peers[bench.OURS[2]]()
    written = tuple(o.copy() for o in case.outs)
    unfused = case.peers["normserve add+norm"]()
    for a, b, c, d in zip(one_shot, prepared, written, unfused, strict=True):
        assert a.tobytes() == b.tobytes() == c.tobytes()
        # bitwise where NumPy's add is normserve's (x + r); a skip bias NumPy adds in a
        # second FP32 rounding, the kernels round the sum once
        if case.layer.skip_bias is None:
            assert d.tobytes() == b.tobytes()
        np.testing.assert_allclose(d, b, rtol=1e-5, atol=1e-5)
    got = case.peers["torch"]()
    for t, y in zip(got, prepared, strict=True):
        np.testing.assert_allclose(t.numpy(), y, rtol=1e-5, atol=1e-5)
    assert isinstance(got[0], torch.Tensor)
    for label in ("onnxruntime", "onnxruntime add+norm"):
        outs = case.peers[label].__defaults__[0]  # the buffers ORT writes through IOBinding
        case.peers[label]()
        for o, y in zip(outs, prepared, strict=True):
            np.testing.assert_allclose(o, y, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_fused_case_runs_through_the_command(tmp_path):
    rows = _smoke_rows(tmp_path, "add_rms_norm 256x4096", "--modes", "back-to-back")
    impls = {r["impl"] for r in rows}
    assert impls >= {*bench.OURS, "torch", "onnxruntime", "onnxruntime add+norm",
                     "normserve add+norm"}
