"""The CUDA kernels in Numba's CUDA simulator (no GPU needed; every thread runs in Python).

The simulator is chosen when ``numba.cuda`` is first imported, so it cannot be switched on
inside a pytest process whose other test files already loaded Numba. Run plainly, this file
re-runs itself in a child pytest with ``NUMBA_ENABLE_CUDASIM=1``; run with the variable set,
it holds the tests themselves. Shapes are tiny and odd (not multiples of the warp, block or
GEMM tile) because the simulator is slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"

if not SIMULATED:

    @pytest.mark.parametrize("marks", ["not slow", pytest.param("slow", marks=pytest.mark.slow)])
    def test_simulator_suite(marks: str) -> None:
        """The simulator tests below, in a child process with the simulator on: the benchmark
        ones (slow) when this run selects slow tests, the others otherwise."""
        env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", marks,
             __file__],
            cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True,
            timeout=900, check=False)
        print(proc.stdout[-3000:])
        assert proc.returncode == 0, proc.stdout[-20000:] + proc.stderr[-5000:]

else:
    from cuda_cases import (
        Sizes,
        assert_matches_reference,
        fused_matches,
        make_case,
        make_cases,
        random_input,
    )
    from numba import cuda

    from normserve import kernels
    from normserve.bench import cuda as bench_cuda
    from normserve.kernels import cuda_kernels as ck
    from normserve.kernels import dtypes
    from normserve.kernels import reference as ref
    from normserve.kernels.oracle import assert_close

    SIZES = Sizes(batch=3, features=37, channels=6, groups=3, spatial=(5,), in_features=37,
                  out_features=23)
    CASES = {case.kind: case for case in make_cases(SIZES)}

    def test_running_in_the_simulator() -> None:
        from numba.core import config

        assert config.ENABLE_CUDASIM
        assert kernels.cuda_available()
        assert kernels.prepare("layer_norm", normalized_shape=[4], device="auto").device == "cuda"

    @pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["fp32", "fp16"])
    @pytest.mark.parametrize("kind", sorted(CASES))
    def test_kind_matches_reference(kind: str, dtype: type) -> None:
        case = CASES[kind]
        x = random_input(case.shape, np.dtype(dtype))
        assert_matches_reference(case, x, case.layer().apply(x))

    @pytest.mark.parametrize("kind", ["layer_norm", "group_norm", "weight_norm"])
    def test_fp64_matches_reference(kind: str) -> None:
        case = CASES[kind]
        x = random_input(case.shape, np.dtype(np.float64))
        assert_matches_reference(case, x, case.layer().apply(x))

    @pytest.mark.skipif(dtypes.BFLOAT16 is None, reason="ml_dtypes not installed")
    def test_bf16_numpy_input_is_widened_on_the_host() -> None:
        case = CASES["rms_norm"]
        x = random_input(case.shape, dtypes.BFLOAT16)
        assert_matches_reference(case, x, case.layer().apply(x))

    def test_large_offset_layer_norm_fp32() -> None:
        """1e4 + N(0, 1): a plain FP32 mean would be off by ~1e-3; the corrected one is not."""
        x = random_input((2, 1000), np.dtype(np.float32), offset=1e4)
        y = kernels.layer_norm(x, [1000], device="cuda")
        assert np.abs(y - ref.layer_norm(x, [1000])).max() < 1e-4

    def test_rows_longer_than_the_register_cache() -> None:
        """Rows past ITEMS * MAX_THREADS values re-read their tail from global memory."""
        n = ck.ITEMS * ck.MAX_THREADS + 37
        x = random_input((1, 1, n), np.dtype(np.float32), offset=3.0)
        case = make_case("instance_norm", Sizes(1, 4, 1, 1, (n,), 4, 4))  # one channel
        assert_matches_reference(case, x, case.layer().apply(x))

    def test_group_norm_channel_affine_on_odd_spatial() -> None:
        """7 channels per group over 3x5 positions: the affine index is j // spatial."""
        case = make_case("group_norm", Sizes(2, 4, 14, 2, (3, 5), 4, 4))
        x = random_input(case.shape, np.dtype(np.float32))
        assert_matches_reference(case, x, case.layer().apply(x))

    def test_layer_norm_over_several_trailing_dims() -> None:
        x = random_input((2, 3, 7), np.dtype(np.float32))
        w = np.linspace(0.5, 1.5, 21).reshape(3, 7)
        y = kernels.layer_norm(x, [3, 7], w, device="cuda")
        expected = ref.layer_norm(x, [3, 7], w)
        assert_close(y, expected, np.float32)

    def test_rms_norm_default_eps_fp16_is_fp32_epsilon() -> None:
        """Tiny-valued rows make eps visible: FP16 data uses the FP32 machine epsilon."""
        x = np.full((1, 33), 1e-4, dtype=np.float16)
        y = kernels.rms_norm(x, [33], device="cuda")
        expected = ref.rms_norm(x, [33], eps=float(np.finfo(np.float32).eps))
        assert_close(y, expected, np.float16)

    @pytest.mark.parametrize(("kind", "batch"),
                             [("layer_norm", 70), ("group_norm", 20), ("spectral_norm", 70)])
    def test_batch_invariance(kind: str, batch: int) -> None:
        """A sample alone, in a short batch and in a long one: bitwise equal.

        The long batch spans several 8-row normalisation blocks (group norm has 3 rows a
        sample) or two GEMM row tiles, and each slice moves the probed sample to another
        position in its block.
        """
        case = CASES[kind]
        layer = case.layer()
        x = random_input((batch, *case.shape[1:]), np.dtype(np.float32))
        full = layer.apply(x)
        for lo, hi in ((batch - 4, batch - 3), (batch - 9, batch), (5, batch)):
            part = layer.apply(x[lo:hi])
            np.testing.assert_array_equal(part, full[lo:hi])

    def test_nan_stays_in_its_row() -> None:
        case = CASES["layer_norm"]
        x = random_input(case.shape, np.dtype(np.float32))
        x[1, 5] = np.nan
        y = case.layer().apply(x)
        assert np.isnan(y[1]).all()
        assert np.isfinite(y[[0, 2]]).all()
        assert_matches_reference(case, x[[0, 2]], y[[0, 2]])

    def test_device_arrays_in_and_out_without_host_copies() -> None:
        case = CASES["group_norm"]
        layer = case.layer()
        x = random_input(case.shape, np.dtype(np.float16))
        dx = cuda.to_device(x)
        dy = layer.apply(dx)
        assert not isinstance(dy, np.ndarray)
        np.testing.assert_array_equal(dy.copy_to_host(), layer.apply(x))
        dout = cuda.device_array(case.shape, dtype=np.float16)
        assert layer.apply(dx, out=dout) is dout
        np.testing.assert_array_equal(dout.copy_to_host(), dy.copy_to_host())

    def test_prepared_layer_keeps_parameters_resident() -> None:
        case = CASES["weight_norm"]
        layer = case.layer()
        x = random_input(case.shape, np.dtype(np.float32))
        layer.apply(x)
        cached = dict(layer._cast)
        layer.apply(x)
        assert layer._cast == cached
        (params,) = cached.values()
        assert all(hasattr(p, "copy_to_host") for p in params.values())

    def test_numpy_out_is_filled() -> None:
        case = CASES["batch_norm"]
        x = random_input(case.shape, np.dtype(np.float32))
        out = np.empty_like(x)
        assert case.layer().apply(x, out=out) is out
        assert_matches_reference(case, x, out)

    def test_layer_to_cuda_and_empty_batch() -> None:
        cpu_layer = CASES["rms_norm"].layer("cpu")
        gpu_layer = cpu_layer.to("cuda")
        assert gpu_layer.device == "cuda"
        empty = np.empty((0, SIZES.features), dtype=np.float32)
        assert gpu_layer.apply(empty).shape == (0, SIZES.features)
        assert gpu_layer.apply(cuda.to_device(empty)).shape == (0, SIZES.features)

    def test_bad_arguments_name_the_argument() -> None:
        layer = CASES["layer_norm"].layer()
        x = random_input(CASES["layer_norm"].shape, np.dtype(np.float32))
        dx = cuda.to_device(x)
        with pytest.raises(TypeError, match="out"):
            layer.apply(dx, out=np.empty_like(x))
        with pytest.raises(TypeError, match="out"):
            layer.apply(x, out=cuda.device_array(x.shape, dtype=np.float32))
        with pytest.raises(TypeError, match="out"):
            layer.apply(dx, out=cuda.device_array(x.shape, dtype=np.float64))
        with pytest.raises(ValueError, match="out"):
            layer.apply(dx, out=cuda.device_array((4, 37), dtype=np.float32))
        with pytest.raises(ValueError, match="normalized_shape"):
            layer.apply(cuda.to_device(np.zeros((3, 36), dtype=np.float32)))
        wide = cuda.to_device(np.zeros((3, 74), dtype=np.float32))
        with pytest.raises(ValueError, match="C-contiguous"):
            layer.apply(wide[:, ::2])
        with pytest.raises(TypeError, match="x"):
            layer.apply(cuda.to_device(np.zeros((3, 37), dtype=np.int32)))
        with pytest.raises(TypeError, match="x"):
            layer.apply([[1.0] * 37])

    FUSED = {"add_rms_norm": ({"weight": np.linspace(-0.5, 0.5, 37)}, {"offset": 1.0}),
             "add_layer_norm": ({"weight": np.linspace(0.5, 1.5, 37),
                                 "bias": np.linspace(-1, 1, 37),
                                 "skip_bias": np.linspace(-0.3, 0.2, 37)}, {})}

    @pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "bfloat16"])
    @pytest.mark.parametrize("kind", sorted(FUSED))
    def test_fused_kind_is_the_unfused_add_and_norm(kind: str, dtype: str) -> None:
        if dtype == "bfloat16" and dtypes.BFLOAT16 is None:
            pytest.skip("ml_dtypes not installed")
        dt = dtypes.BFLOAT16 if dtype == "bfloat16" else np.dtype(dtype)
        params, hyper = FUSED[kind]
        x = random_input((3, 37), dt)
        r = random_input((3, 37), dt, seed=2, offset=1.0)
        fused_matches(kind, x, r, params, {"normalized_shape": [37], **hyper})

    def test_fused_in_place_on_device_arrays() -> None:
        params, hyper = FUSED["add_layer_norm"]
        layer = kernels.prepare("add_layer_norm", params, normalized_shape=[37],
                                device="cuda", **hyper)
        x = random_input((2, 37), np.dtype(np.float32))
        r = random_input((2, 37), np.dtype(np.float32), seed=2)
        y, h = layer.apply(x, r)
        dx, dr = cuda.to_device(x), cuda.to_device(r)
        dy, dh = layer.apply(dx, dr, out=dx, residual_out=dr)  # vLLM's in-place update
        assert dy is dx and dh is dr
        np.testing.assert_array_equal(dy.copy_to_host(), y)
        np.testing.assert_array_equal(dh.copy_to_host(), h)
        with pytest.raises(ValueError, match="residual"):
            layer.apply(cuda.to_device(x), cuda.to_device(r[:1]))
        with pytest.raises(TypeError, match="residual_out"):
            layer.apply(cuda.to_device(x), cuda.to_device(r),
                        residual_out=cuda.device_array((2, 37), dtype=np.float64))
        assert layer.apply(x[:0], r[:0])[0].shape == (0, 37)

    def test_fused_nan_stays_in_its_row() -> None:
        x = random_input((3, 37), np.dtype(np.float32))
        r = random_input((3, 37), np.dtype(np.float32), seed=2)
        r[1, 4] = np.nan
        y, h = kernels.add_rms_norm(x, r, [37], device="cuda")
        assert np.isnan(y[1]).all() and np.isfinite(y[[0, 2]]).all() and np.isnan(h[1, 4])

    def test_cpu_kernels_still_work_beside_the_simulator() -> None:
        """The simulator flag only swaps numba.cuda; @njit CPU kernels run as usual."""
        case = CASES["layer_norm"]
        x = random_input(case.shape, np.dtype(np.float32))
        assert_matches_reference(case, x, case.layer("cpu").apply(x))

    @pytest.mark.slow
    def test_benchmark_refuses_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
        assert bench_cuda.main([]) != 0
        assert "GPU" in capsys.readouterr().err

    @pytest.mark.slow
    def test_benchmark_cases_prepare_and_format() -> None:
        """The GPU benchmark cannot run here; its cases and table can be checked all the same."""
        rng = np.random.default_rng(0)
        rows = []
        for case in bench_cuda.bench_cases(quick=True):
            example = case.example(rng)
            shape = example.shape(case.sizes.batch)
            layer = kernels.prepare(case.kind, example.params, **example.hyper)
            assert len(layer.output_shape(shape)) == len(shape)
            rows.append({"kind": case.kind, "shape": "x".join(map(str, shape)),
                         "dtype": case.dtype.name, "ms": 1.0, "GB/s": 800.0, "copy": 0.8,
                         "torch_ms": 1.1, "speedup": 1.1, "target": case.target})
        table = bench_cuda.format_table(rows, 1000.0, "test device")
        assert table.count("target met") == 4
        assert {"layer_norm", "rms_norm", "spectral_norm"} <= set(table.split())
