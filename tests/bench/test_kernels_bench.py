"""``normserve bench --dtype``: the fused norms (and every kind) in bfloat16 and float16.

Each column computes the same block in the dtype (the three normserve calls bitwise, the
peers within two units in the last place); a peer ONNX Runtime's CPU provider has no kernel
for shows as not run, with the reason, never silently dropped; bandwidth counts the dtype's
itemsize and every table names its dtype. No timings are asserted (the machine is shared).
FP32: tests/kernels/test_bench.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from normserve.bench import kernels as bench

pytestmark = pytest.mark.slow

BF16 = bench.DTYPES.get("bfloat16")
#: Two units in the last place of values near 1 (bfloat16 keeps 8 significant bits, float16
#: 11): the peers round their weights, sums and products at other points than normserve.
TOLERANCE = {"bfloat16": 2.0**-6, "float16": 2.0**-9}
UNFUSED_ORT = "onnxruntime add+norm"


def _as_f32(a) -> np.ndarray:
    """A column's output (a NumPy array of the dtype, or a torch tensor) as float32."""
    if not isinstance(a, np.ndarray):  # torch: bfloat16 has no NumPy view of its own
        a = a.float().numpy()
    return np.asarray(a, np.float32)


def _outputs(case: bench.Case, label: str) -> tuple[np.ndarray, ...]:
    """A column's (y, h), called once; ONNX Runtime's are the buffers its IOBinding fills."""
    got = case.peers[label]()
    if label.startswith("onnxruntime"):
        got = case.peers[label].__defaults__[0]
    return tuple(_as_f32(a) for a in (got if isinstance(got, (tuple, list)) else (got,)))


@pytest.fixture(scope="module")
def deps():
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    if BF16 is None:
        pytest.skip("bfloat16 needs ml_dtypes")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("case_name", ["add_rms_norm 256x4096", "add_layer_norm 256x4096"])
def test_fused_case_in_half_precision_computes_the_block_in_every_column(deps, case_name,
                                                                        dtype):
    (case,) = bench.build_cases(1, case_name, bench.DTYPES[dtype])
    assert case.dtype == bench.DTYPES[dtype]
    assert all(x.dtype == case.dtype for x in (*case.inputs, *case.outs))
    one_shot, prepared = (case.peers[k]() for k in bench.OURS[:2])
    case.peers[bench.OURS[2]]()
    assert all(a.dtype == case.dtype for a in (*one_shot, *prepared))
    for a, b, c in zip(one_shot, prepared, case.outs, strict=True):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    want = tuple(_as_f32(a) for a in prepared)
    assert np.isfinite(want[0]).all() and np.abs(want[0]).max() > 0.5
    tol = TOLERANCE[dtype]
    for label in ("numpy", "torch", "onnxruntime", "normserve add+norm", UNFUSED_ORT):
        if label in case.not_run:
            continue
        got = _outputs(case, label)
        assert len(got) == 2, label
        for name, g, w in zip(("y", "h"), got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=tol, atol=tol, err_msg=f"{label} {name}")
    # x + r is one correctly rounded add in torch as in normserve: h is the same bits
    if case.layer.skip_bias is None:
        h_torch = case.peers["torch"]()[1]
        assert h_torch.dtype.itemsize == 2 and (_as_f32(h_torch) == want[1]).all()
    # only ONNX Runtime's standard graph may lack a half-precision kernel, and then it says so
    assert set(case.not_run) <= {UNFUSED_ORT}, case.not_run
    for reason in case.not_run.values():
        assert reason.startswith("ONNX Runtime ") and "Add" in reason


def test_bf16_bytes_count_two_byte_elements(deps):
    (f32,) = bench.build_cases(1, "add_rms_norm 256x4096")
    (bf16,) = bench.build_cases(1, "add_rms_norm 256x4096", BF16)
    x = bf16.inputs[0]
    assert x.itemsize == 2
    params = f32.bytes - 4 * f32.inputs[0].nbytes  # the weight, as FP32 in both
    assert bf16.bytes == 4 * x.nbytes + params  # x and residual read, y and h written
    assert f32.bytes - params == 2 * (bf16.bytes - params)


def test_bf16_unfused_ort_graph_is_not_run_or_agrees(deps):
    """ONNX Runtime 1.32's CPU provider has no bfloat16 Add: the peer is listed as not run
    with ONNX Runtime's message. (A later ONNX Runtime that has one runs it, and the column
    test above checks its answer.)"""
    (case,) = bench.build_cases(1, "add_layer_norm 256x4096", BF16)
    assert (UNFUSED_ORT in case.peers) != (UNFUSED_ORT in case.not_run)
    if UNFUSED_ORT in case.not_run:
        reason = case.not_run[UNFUSED_ORT]
        assert "Add + LayerNormalization" in reason and "|" not in reason


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_run_through_the_command(deps, tmp_path, capsys, dtype):
    """``normserve bench --dtype`` end to end: rows tagged with the dtype, bandwidth from
    its itemsize, the tables naming it, a peer that could not run shown with its reason."""
    path = tmp_path / "bench.json"
    assert bench.main(["--only", "add_rms_norm 256x4096", "--dtype", dtype, "--reps", "2",
                       "--threads", "1", "--modes", "back-to-back", "--no-compile-times",
                       "--json", str(path)]) == 0
    out = capsys.readouterr().out
    rows = [r for r in json.loads(path.read_text())["rows"] if r["impl"] != bench.COPY]
    assert {r["dtype"] for r in rows} == {dtype}
    timed = [r for r in rows if r["median_ms"] is not None]
    assert {r["impl"] for r in timed} >= {*bench.OURS, "numpy", "torch", "onnxruntime",
                                          "normserve add+norm"}
    (case,) = bench.build_cases(1, "add_rms_norm 256x4096", bench.DTYPES[dtype])
    for r in timed:
        assert r["gb_per_s"] * r["median_ms"] * 1e6 == pytest.approx(case.bytes)
    assert f"| case ({dtype}) | mode | impl |" in out  # the per-thread table
    assert f"| case ({dtype}) | mode | thr |" in out  # the summary
    for r in rows:
        if r.get("not_run"):
            assert f"| {r['impl']} | 1 | not run: {r['not_run']} |" in out
            assert f"- not run, {r['impl']} on add_rms_norm 256x4096 ({dtype}):" in out


def test_two_dtypes_in_one_run_make_one_summary_each(deps, tmp_path, capsys):
    assert bench.main(["--only", "add_rms_norm 256x4096", "--dtype", "float32", "bfloat16",
                       "--reps", "1", "--threads", "1", "--modes", "back-to-back",
                       "--no-compile-times"]) == 0
    out = capsys.readouterr().out
    for dtype in ("float32", "bfloat16"):
        assert out.count(f"| case ({dtype}) |") == 2  # its table, its summary


def test_every_kind_builds_and_runs_in_bf16(deps):
    """Each kind's columns in bfloat16 on a small layer: normserve's, and every peer either
    runs or says why not (ONNX Runtime's CPU provider lacks bfloat16 for most operators)."""
    from normserve.kernels.kinds import Sizes, kinds

    for kind in kinds().values():
        example = kind.example(np.random.default_rng(0), Sizes(), True)
        case = bench._case(kind, kind.name, example, example.shape(4), 1, BF16)
        want = case.peers[bench.OURS[1]]()
        want = want if isinstance(want, tuple) else (want,)
        assert all(w.dtype == BF16 for w in want), kind.name
        assert {*case.peers, *case.not_run} >= {*bench.OURS, "numpy", "torch", "onnxruntime"}
        assert not {"numpy", "torch"} & set(case.not_run), case.not_run
        for label in case.peers:
            got = _outputs(case, label)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_allclose(g, _as_f32(w), rtol=2**-5, atol=2**-5,
                                           err_msg=f"{kind.name} {label}")
