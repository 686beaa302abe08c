"""CPU kernels against the float64 references: kinds x dtypes x shapes, stability, NaN, batching."""

from __future__ import annotations

import numba
import numpy as np
import pytest
from kernel_cases import DTYPES, ONE_INPUT_KINDS, make_case, sample_input

from normserve import kernels
from normserve.kernels import cpu, cpu_jit
from normserve.kernels import reference as R
from normserve.kernels.oracle import LARGE_OFFSET_TOLERANCE, assert_close

KINDS = ONE_INPUT_KINDS  # the fused kinds: test_fused*.py
FEATURES = [1, 3, 1023, 4097]


def _layer(case):
    return kernels.prepare(case.kind, case.params, **case.hyper)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("features", FEATURES)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_reference(kind, features, dtype):
    case = make_case(kind, features)
    layer = _layer(case)
    for batch in (1, 4):
        x = sample_input(case, batch, dtype)
        assert_close(layer.apply(x), case.reference(x), dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_without_affine_parameters(kind):
    case = make_case(kind, 17, affine=False)
    x = sample_input(case, 3, np.float32)
    assert_close(_layer(case).apply(x), case.reference(x), np.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_batch(kind, dtype):
    case = make_case(kind, 8)
    y = _layer(case).apply(np.zeros((0, *case.sample), dtype))
    assert y.dtype == dtype
    assert y.shape[0] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_out_is_written_and_returned(kind):
    case = make_case(kind, 9)
    layer = _layer(case)
    x = sample_input(case, 5, np.float32)
    expected = layer.apply(x)
    out = np.full_like(expected, np.nan)
    assert layer.apply(x, out=out) is out
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=str)
def test_batch_invariance_is_bitwise(kind, dtype):
    """Every row computed alone equals the same row inside batches of 1, 7 and 1000."""
    case = make_case(kind, 1023 if kind not in ("instance_norm", "group_norm") else 33)
    layer = _layer(case)
    x = sample_input(case, 1000, dtype, seed=7)
    full = layer.apply(x)
    for rows in (slice(0, 1), slice(3, 10)):
        np.testing.assert_array_equal(layer.apply(x[rows]), full[rows])
    for i in (0, 1, 2, 5, 998, 999):
        np.testing.assert_array_equal(layer.apply(x[i : i + 1]), full[i : i + 1])


def test_large_offset_layer_norm_is_stable():
    """SPEC: a layer norm of 1e4 + N(0, 1) in FP32 matches float64 to 1e-3."""
    x = (1e4 + np.random.default_rng(3).standard_normal((64, 4097))).astype(np.float32)
    y = kernels.layer_norm(x, [4097])
    np.testing.assert_allclose(y, R.layer_norm(x, [4097]), atol=LARGE_OFFSET_TOLERANCE, rtol=0)


@pytest.mark.parametrize("kind", ["layer_norm", "instance_norm", "group_norm"])
def test_large_offset_keeps_fp32_tolerance(kind):
    """The split-mean output pass keeps even offset data within the plain FP32 tolerance."""
    case = make_case(kind, 1023)
    x = sample_input(case, 4, np.float32, offset=1e4)
    assert_close(_layer(case).apply(x), case.reference(x), np.float32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_stay_in_their_rows(kind, bad):
    case = make_case(kind, 12)
    layer = _layer(case)
    x = sample_input(case, 4, np.float32)
    x[2].flat[5] = bad
    y = layer.apply(x)
    clean = np.delete(np.arange(4), 2)
    assert np.all(np.isfinite(y[clean]))
    assert_close(y[clean], case.reference(x[clean]), np.float32)
    assert not np.all(np.isfinite(y[2]))


def test_multi_dim_normalized_shape():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5, 7)).astype(np.float32)
    w, b = rng.standard_normal((5, 7)), rng.standard_normal((5, 7))
    assert_close(kernels.layer_norm(x, (5, 7), w, b), R.layer_norm(x, (5, 7), w, b), np.float32)
    assert_close(kernels.rms_norm(x, [4, 5, 7]), R.rms_norm(x, [4, 5, 7]), np.float32)


def test_non_contiguous_input():
    x = np.random.default_rng(0).standard_normal((6, 40)).astype(np.float32)[:, ::2]
    assert_close(kernels.layer_norm(x, [20]), R.layer_norm(x, [20]), np.float32)


@pytest.mark.parametrize("eps", [1e-12, 1e-5, 0.1, 10.0])
def test_eps_is_honoured(eps):
    x = np.random.default_rng(0).standard_normal((4, 9)).astype(np.float64) * 0.01
    np.testing.assert_allclose(kernels.layer_norm(x, [9], eps=eps),
                               R.layer_norm(x, [9], eps=eps), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(kernels.rms_norm(x, [9], eps=eps), R.rms_norm(x, [9], eps=eps),
                               rtol=1e-10, atol=1e-12)


def test_rms_norm_default_eps_follows_accumulation_dtype():
    """eps=None is finfo(float32).eps for FP16/FP32 inputs and finfo(float64).eps for FP64."""
    x = np.full((1, 4), 1e-4)
    for dtype in (np.float64, np.float32):
        eps = np.finfo(dtype).eps
        y = kernels.rms_norm(x.astype(dtype), [4])
        np.testing.assert_allclose(y, 1e-4 / np.sqrt(1e-8 + eps), rtol=1e-5)


def test_constant_rows_give_zeros_not_nan():
    x = np.full((3, 64), 7.25, dtype=np.float32)
    np.testing.assert_array_equal(kernels.layer_norm(x, [64]), 0.0)
    np.testing.assert_array_equal(kernels.group_norm(x.reshape(3, 4, 16), 2), 0.0)


def test_batch_norm_1d_and_spatial_layouts():
    rng = np.random.default_rng(0)
    mean, var = rng.standard_normal(6), rng.uniform(0.5, 2, 6)
    for shape in [(9, 6), (2, 6, 11), (2, 6, 3, 5)]:
        x = rng.standard_normal(shape).astype(np.float32)
        assert_close(kernels.batch_norm(x, mean, var), R.batch_norm(x, mean, var), np.float32)


def test_spectral_sigma_exact_without_u_v():
    w = np.random.default_rng(0).standard_normal((7, 5))
    assert kernels.spectral_sigma(w) == pytest.approx(np.linalg.svd(w)[1][0], rel=1e-12)


def test_prepared_layer_keeps_folded_parameters():
    mean, var = np.array([1.0, -2.0]), np.array([4.0, 0.25])
    layer = kernels.prepare("batch_norm", {"running_mean": mean, "running_var": var}, eps=1e-5)
    np.testing.assert_allclose(layer.params["scale"], 1 / np.sqrt(var + 1e-5))
    np.testing.assert_allclose(layer.params["shift"], -mean / np.sqrt(var + 1e-5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("out_features", [1, 15, 16, 17, 33])
def test_linear_tile_edges(out_features, dtype):
    """Row counts and widths on both sides of the GEMM tile (4 or 2 rows x 16 columns)."""
    rng = np.random.default_rng(out_features)
    v, g = rng.standard_normal((out_features, 19)), rng.uniform(0.5, 2, (out_features, 1))
    bias = rng.standard_normal(out_features)
    layer = kernels.prepare("weight_norm", {"weight_v": v, "weight_g": g, "bias": bias})
    x = rng.standard_normal((67, 19)).astype(dtype)
    full = layer.apply(x)
    assert_close(full, R.weight_norm_linear(x, v, g, bias), np.dtype(dtype))
    for rows in (slice(0, 1), slice(1, 3), slice(2, 5), slice(60, 67)):
        np.testing.assert_array_equal(layer.apply(x[rows]), full[rows])


@pytest.mark.parametrize("v_dtype", [np.float32, np.float64, np.float16], ids=str)
@pytest.mark.parametrize("dim", [0, 1])
def test_weight_norm_from_any_source_dtype_and_dim(v_dtype, dim):
    """The layer keeps FP32/FP64 ``weight_v`` as given and scales it per row while packing:
    the packed panels hold exactly its float64 ``weight`` rounded once, and the result is
    the float64 reference's."""
    rng = np.random.default_rng(dim)
    v = rng.standard_normal((37, 21)).astype(v_dtype)
    g = rng.uniform(0.5, 2, (37, 1) if dim == 0 else (1, 21))
    layer = kernels.prepare("weight_norm", {"weight_v": v, "weight_g": g}, dim=dim)
    np.testing.assert_allclose(layer.weight, R.weight_norm_weight(v, g, dim), rtol=1e-15)
    for dtype in (np.float32, np.float64):
        packed = layer._params_for(np.dtype(dtype), (1, 21))["weight"]
        unpacked = packed.transpose(0, 2, 1).reshape(-1, 21)[:37]
        np.testing.assert_array_equal(unpacked, layer.weight.astype(dtype))
        x = rng.standard_normal((5, 21)).astype(dtype)
        assert_close(layer.apply(x), R.weight_norm_linear(x, v, g, dim=dim), np.dtype(dtype))


def test_work_estimates_scale_with_the_arithmetic():
    """The service schedules by ``work``: elements for norms, multiply-adds for linears."""
    ln = kernels.prepare("layer_norm", {}, normalized_shape=[64])
    params = {"weight_v": np.ones((32, 64)), "weight_g": np.ones((32, 1))}
    wn = kernels.prepare("weight_norm", params)
    assert ln.work((10, 64)) == 640
    assert wn.work((10, 64)) == 10 * 64 * 32


@pytest.mark.parametrize("first", [1e6, -3e7, 1e4 + 0.5])
def test_outlier_first_element_keeps_statistics_exact(first):
    """FP32 rows are reduced about their first element: an extreme one must not cost accuracy."""
    rng = np.random.default_rng(11)
    x = (1e4 + rng.standard_normal((5, 4097))).astype(np.float32)
    x[:, 0] = first
    for kind in ("layer_norm", "group_norm"):
        if kind == "layer_norm":
            y, ref = kernels.layer_norm(x, [4097]), R.layer_norm(x, [4097])
        else:
            x3 = x.reshape(5, 1, 4097)
            y, ref = kernels.group_norm(x3, 1), R.group_norm(x3, 1)
        assert_close(y, ref, np.float32)


def test_parallel_min_work_moves_the_variant_choice(monkeypatch):
    """``set_parallel_min_work`` decides which variant runs (a server raises it)."""
    kernel = cpu._row_norm
    seen: list[str] = []
    monkeypatch.setattr(kernel, "serial", lambda *args: seen.append("serial"))
    monkeypatch.setattr(kernel, "threaded", lambda *args: seen.append("threaded"))
    monkeypatch.setattr(cpu_jit, "_parallel_min_work", cpu_jit.parallel_min_work())
    x = np.zeros((64, 1024), np.float32)
    for threshold in (64 * 1024, 64 * 1024 + 1):
        cpu_jit.set_parallel_min_work(threshold)
        kernel(x, x, x[0], x[0], 1e-5, True)
    threads = numba.get_num_threads()
    assert seen == ["threaded" if threads > 1 else "serial", "serial"]
    with pytest.raises(ValueError, match="parallel_min_work must be >= 1, got 0"):
        cpu_jit.set_parallel_min_work(0)


@pytest.mark.parametrize("kind", KINDS)
def test_variants_agree_bitwise(kind, monkeypatch):
    """Every call threaded, then every call serial: the same bits."""
    case = make_case(kind, 33)
    layer = _layer(case)
    x = sample_input(case, 257, np.float32, seed=5)
    monkeypatch.setattr(cpu_jit, "_parallel_min_work", 1)
    threaded = layer.apply(x)
    cpu_jit.set_parallel_min_work(1 << 40)
    np.testing.assert_array_equal(layer.apply(x), threaded)
