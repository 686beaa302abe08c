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


@pytest.mark.slow
def test_rows_and_summary_cover_every_mode_and_column(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    path = tmp_path / "bench.json"
    assert bench.main(["--only", CASE, "--reps", "2", "--threads", "1", "--idle-ms", "1",
                       "--no-compile-times", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())["rows"]
    timed = [r for r in rows if r["speedup_vs_fastest_peer"] is not None]
    assert {(r["mode"], r["impl"]) for r in timed} >= {
        (m, k) for m in bench.MODES for k in (*bench.OURS, "numpy", "torch", "onnxruntime")}
    assert all(r["median_ms"] > 0 and r["case"] == CASE for r in timed)
    summary = bench.format_summary(rows).splitlines()
    assert all(k in summary[0] for k in bench.OURS)
    assert [line.split(" | ")[1] for line in summary[2:]] == list(bench.MODES)
