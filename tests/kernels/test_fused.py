"""The fused norms (add_rms_norm, add_layer_norm) and RMSNorm's offset on the CPU.

The promise: the fused result is bitwise normserve's own add (summed in the compute dtype,
rounded once) followed by the unfused norm, for every dtype; and close to the float64
references and to PyTorch as a user writes the block.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kernel_cases import DTYPES

from normserve import kernels
from normserve.kernels import cpu_jit, dtypes
from normserve.kernels import reference as R
from normserve.kernels.oracle import assert_close

KINDS = ("add_rms_norm", "add_layer_norm")


def _params(kind: str, n: int, affine: bool = True, seed: int = 0) -> dict:
    if not affine:
        return {}
    rng = np.random.default_rng(seed)
    p = {"weight": rng.uniform(0.5, 1.5, n).astype(np.float32)}
    if kind == "add_layer_norm":
        p["bias"] = rng.uniform(-1, 1, n).astype(np.float32)
        p["skip_bias"] = rng.uniform(-0.5, 0.5, n).astype(np.float32)
    return p


def _inputs(shape, dtype, seed: int = 1, offset: float = 0.0):
    rng = np.random.default_rng(seed)
    x = (offset + rng.standard_normal(shape)).astype(dtype)
    r = rng.standard_normal(shape).astype(dtype)
    return x, r


def _unfused(kind: str, x, r, params: dict, hyper: dict):
    """normserve's own add (the exact sum rounded once: float64 sums, as FP32 adds would
    give for two terms) then the unfused norm."""
    h = x.astype(np.float64) + r.astype(np.float64)
    if params.get("skip_bias") is not None:
        h = h + params["skip_bias"].astype(np.float64)
    h = h.astype(x.dtype)
    norm = {k: v for k, v in params.items() if k != "skip_bias"}
    return kernels.prepare(kind.removeprefix("add_"), norm, **hyper).apply(h), h


def _reference(kind: str, x, r, params: dict, hyper: dict):
    if kind == "add_rms_norm":
        return R.add_rms_norm(x, r, hyper["normalized_shape"], params.get("weight"),
                              hyper.get("eps"), hyper.get("offset", 0.0))
    return R.add_layer_norm(x, r, hyper["normalized_shape"], params.get("weight"),
                            params.get("bias"), params.get("skip_bias"), hyper.get("eps", 1e-5))


def _hyper(kind: str, n: int, offset: float = 0.0) -> dict:
    hyper = {"normalized_shape": [n]}
    if offset and kind == "add_rms_norm":
        hyper["offset"] = offset
    return hyper


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("kind", KINDS)
def test_bitwise_the_unfused_add_and_norm(kind, affine, dtype):
    for n, offset in ((33, 0.0), (1024, 1.0), (7, 2.5)):
        params, hyper = _params(kind, n, affine), _hyper(kind, n, offset)
        x, r = _inputs((5, n), dtype)
        y, h = kernels.prepare(kind, params, **hyper).apply(x, r)
        y_ref, h_ref = _unfused(kind, x, r, params, hyper)
        assert h.dtype == y.dtype == np.dtype(dtype)
        assert h.tobytes() == h_ref.tobytes(), (n, offset)
        assert y.tobytes() == y_ref.tobytes(), (n, offset)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_matches_float64_reference(kind, dtype):
    for n, offset in ((16, 0.0), (1023, 1.0)):
        params, hyper = _params(kind, n), _hyper(kind, n, offset)
        x, r = _inputs((6, n), dtype)
        y, h = getattr(kernels, kind)(x, r, **params, **hyper)
        y_ref, h_ref = _reference(kind, x, r, params, hyper)
        assert_close(h, h_ref, dtype, f"{kind} h")
        assert_close(y, y_ref, dtype, f"{kind} y")


@pytest.mark.parametrize("kind", KINDS)
def test_large_offset_data_stays_accurate(kind):
    params, hyper = _params(kind, 1023), _hyper(kind, 1023)
    x, r = _inputs((4, 1023), np.float32, offset=1e4)
    y, h = kernels.prepare(kind, params, **hyper).apply(x, r)
    y_ref, _ = _reference(kind, x, r, params, hyper)
    # h is rounded to FP32 before the norm (the contract): at 1e4 that is 1e-3 absolute of
    # the float64 sum, so the reference is taken from the rounded h.
    y_h, _ = _reference(kind, h, np.zeros_like(h), {k: v for k, v in params.items()
                                                   if k != "skip_bias"}, hyper)
    np.testing.assert_allclose(y, y_h, atol=1e-3, rtol=0)
    assert np.isfinite(y_ref).all()


@pytest.mark.parametrize("offset", [1.0, 100.0, -3.5])
def test_large_offset_parameter(offset):
    params, hyper = _params("add_rms_norm", 64), _hyper("add_rms_norm", 64, offset)
    x, r = _inputs((3, 64), np.float32)
    y, _ = kernels.add_rms_norm(x, r, **params, **hyper)
    y_ref, _ = _reference("add_rms_norm", x, r, params, hyper)
    assert_close(y, y_ref, np.float32)


@pytest.mark.parametrize("kind", KINDS)
def test_torch_as_a_user_writes_the_block(kind):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    n = 256
    params = {k: torch.from_numpy(v) for k, v in _params(kind, n).items()}
    x, r = _inputs((8, n), np.float32)
    xt, rt = torch.from_numpy(x), torch.from_numpy(r)
    if kind == "add_rms_norm":
        h_t = xt + rt
        y_t = F.rms_norm(h_t, (n,), params["weight"])
        got = kernels.add_rms_norm(x, r, [n], params["weight"].numpy())
    else:
        h_t = xt + rt + params["skip_bias"]
        y_t = F.layer_norm(h_t, (n,), params["weight"], params["bias"], 1e-5)
        got = kernels.add_layer_norm(x, r, [n], **{k: v.numpy() for k, v in params.items()})
    if kind == "add_rms_norm":  # x + r: one FP32 add, as torch's
        assert got[1].tobytes() == h_t.numpy().tobytes()
    else:  # x + r + b: torch rounds twice, normserve once
        np.testing.assert_allclose(got[1], h_t.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(got[0], y_t.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gemma_rms_norm_as_transformers_writes_it(dtype):
    """transformers' GemmaRMSNorm: x.float() normalised, times (1 + weight.float()), cast."""
    torch = pytest.importorskip("torch")
    n = 128
    w = np.random.default_rng(2).uniform(-0.5, 0.5, n).astype(np.float32)
    x, r = _inputs((4, n), np.float32)
    tdt = getattr(torch, dtype)
    xt, rt, wt = (torch.from_numpy(a).to(tdt) for a in (x, r, w))
    eps = 1e-6

    def gemma(t):
        tf = t.float()
        out = tf * torch.rsqrt(tf.pow(2).mean(-1, keepdim=True) + eps)
        return (out * (1.0 + wt.float())).type_as(t)

    h_t = xt + rt
    np_dt = np.float32 if dtype == "float32" else dtypes.BFLOAT16
    xs, rs = (a.float().numpy().astype(np_dt) for a in (xt, rt))
    y, h = kernels.add_rms_norm(xs, rs, [n], wt.float().numpy(), eps=eps, offset=1.0)
    assert h.tobytes() == h_t.float().numpy().astype(np_dt).tobytes()
    tol = 1e-5 if dtype == "float32" else 1.6e-2
    np.testing.assert_allclose(y.astype(np.float32), gemma(h_t).float().numpy(), rtol=tol,
                               atol=tol)
    # the unfused rms_norm takes the same offset
    y1 = kernels.rms_norm(xs, [n], wt.float().numpy(), eps=eps, offset=1.0)
    np.testing.assert_allclose(y1.astype(np.float32), gemma(xt).float().numpy(), rtol=tol,
                               atol=tol)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_in_place_gives_the_same_result(kind, dtype):
    params, hyper = _params(kind, 40), _hyper(kind, 40, 1.0)
    layer = kernels.prepare(kind, params, **hyper)
    x, r = _inputs((9, 40), dtype)
    y, h = layer.apply(x, r)
    xi, ri = x.copy(), r.copy()
    yi, hi = layer.apply(xi, ri, out=xi, residual_out=ri)  # vLLM's in-place update
    assert yi is xi and hi is ri
    assert yi.tobytes() == y.tobytes() and hi.tobytes() == h.tobytes()
    xs, rs = x.copy(), r.copy()
    ys, hs = layer.apply(xs, rs, out=rs, residual_out=xs)  # the other way round
    assert ys.tobytes() == y.tobytes() and hs.tobytes() == h.tobytes()


@pytest.mark.parametrize("kind", KINDS)
def test_nan_and_inf_stay_in_their_rows(kind):
    params, hyper = _params(kind, 16), _hyper(kind, 16)
    x, r = _inputs((4, 16), np.float32)
    x[1, 3], r[2, 5] = np.nan, np.inf
    y, h = kernels.prepare(kind, params, **hyper).apply(x, r)
    assert np.isnan(h[1, 3]) and np.isinf(h[2, 5])
    # IEEE: an Inf in the row makes the scale 0 (or NaN), so the row is 0, NaN or Inf
    assert np.isnan(y[1]).all() and not np.isfinite(y[2]).all()
    assert np.isfinite(y[[0, 3]]).all() and np.isfinite(h[[0, 3]]).all()
    y_ref, h_ref = _unfused(kind, x, r, params, hyper)
    assert y.tobytes() == y_ref.tobytes() and h.tobytes() == h_ref.tobytes()


@pytest.mark.parametrize("kind", KINDS)
def test_size_one_rows_and_empty_batches(kind):
    params, hyper = _params(kind, 1), _hyper(kind, 1)
    layer = kernels.prepare(kind, params, **hyper)
    x, r = _inputs((3, 1), np.float32)
    y, h = layer.apply(x, r)
    y_ref, h_ref = _reference(kind, x, r, params, hyper)
    assert_close(y, y_ref, np.float32)
    assert_close(h, h_ref, np.float32)
    y0, h0 = layer.apply(*_inputs((0, 1), np.float32))
    assert y0.shape == h0.shape == (0, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_invariant_bitwise(kind, monkeypatch):
    """A row's outputs are the same bits alone, in any batch, threaded or serial."""
    params, hyper = _params(kind, 33), _hyper(kind, 33, 1.0)
    layer = kernels.prepare(kind, params, **hyper)
    x, r = _inputs((600, 33), np.float32, seed=5)
    y, h = layer.apply(x, r)  # past the threading threshold
    monkeypatch.setattr(cpu_jit, "_parallel_min_work", 1 << 40)
    ys, hs = layer.apply(x, r)
    assert ys.tobytes() == y.tobytes() and hs.tobytes() == h.tobytes()
    for i in (0, 17, 599):
        yi, hi = layer.apply(x[i : i + 1], r[i : i + 1])
        assert yi.tobytes() == y[i : i + 1].tobytes() and hi.tobytes() == h[i : i + 1].tobytes()


def test_multi_dim_normalized_shape():
    params = {"weight": np.random.default_rng(0).uniform(0.5, 1.5, (4, 8))}
    x, r = _inputs((3, 4, 8), np.float32)
    y, h = kernels.add_rms_norm(x, r, [4, 8], params["weight"])
    y_ref, h_ref = R.add_rms_norm(x, r, [4, 8], params["weight"])
    assert_close(y, y_ref, np.float32)
    assert_close(h, h_ref, np.float32)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), rows=st.integers(1, 5), n=st.integers(1, 70),
       dtype=st.sampled_from(DTYPES), offset=st.sampled_from([0.0, 1.0, -0.5]),
       seed=st.integers(0, 2**16))
def test_bitwise_property(kind, rows, n, dtype, offset, seed):
    params, hyper = _params(kind, n, seed=seed), _hyper(kind, n, offset)
    x, r = _inputs((rows, n), dtype, seed=seed)
    y, h = kernels.prepare(kind, params, **hyper).apply(x, r)
    y_ref, h_ref = _unfused(kind, x, r, params, hyper)
    assert h.tobytes() == h_ref.tobytes() and y.tobytes() == y_ref.tobytes()


# --- bad input --------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_residual_of_another_shape_or_dtype_names_residual(kind):
    fn = getattr(kernels, kind)
    x, r = _inputs((3, 8), np.float32)
    with pytest.raises(ValueError, match="residual"):
        fn(x, r[:2], [8])
    with pytest.raises(ValueError, match="residual"):
        fn(x, r.astype(np.float64), [8])
    with pytest.raises(TypeError, match="residual"):
        fn(x, r.tolist(), [8])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_offset_not_finite_names_offset(bad):
    x, r = _inputs((2, 8), np.float32)
    with pytest.raises(ValueError, match="offset"):
        kernels.add_rms_norm(x, r, [8], offset=bad)
    with pytest.raises(ValueError, match="offset"):
        kernels.rms_norm(x, [8], offset=bad)
    with pytest.raises(TypeError, match="offset"):
        kernels.prepare("rms_norm", normalized_shape=[8], offset="1")


def test_skip_bias_of_the_wrong_length_names_skip_bias():
    x, r = _inputs((2, 8), np.float32)
    with pytest.raises(ValueError, match="skip_bias"):
        kernels.add_layer_norm(x, r, [8], skip_bias=np.zeros(7))


@pytest.mark.parametrize("kind", KINDS)
def test_bad_outputs_are_named(kind):
    x, r = _inputs((2, 8), np.float32)
    layer = kernels.prepare(kind, normalized_shape=[8])
    with pytest.raises(ValueError, match="residual_out"):
        layer.apply(x, r, residual_out=np.empty((2, 7), np.float32))
    with pytest.raises(TypeError, match="residual_out"):
        layer.apply(x, r, residual_out=np.empty((2, 8), np.float64))
    same = np.empty_like(x)
    with pytest.raises(ValueError, match="out and residual_out"):
        layer.apply(x, r, out=same, residual_out=same)
    with pytest.raises(ValueError, match="normalized_shape"):
        layer.apply(np.zeros((2, 9), np.float32), np.zeros((2, 9), np.float32))


def test_offset_is_a_config_field():
    layer = kernels.prepare("rms_norm", normalized_shape=[8], offset=1.0)
    assert layer.hyper["offset"] == 1.0 and layer.offset == 1.0
    assert "offset" not in kernels.prepare("rms_norm", normalized_shape=[8]).hyper
    again = kernels.prepare("rms_norm", layer.params, **layer.hyper)
    x = _inputs((2, 8), np.float32)[0]
    assert again.apply(x).tobytes() == layer.apply(x).tobytes()
    # no weight: the scale is offset + 1
    np.testing.assert_array_equal(layer.apply(x), kernels.rms_norm(x, [8], np.full(8, 2.0)))


def test_prepared_layers_share_the_service_contract():
    layer = kernels.prepare("add_layer_norm", normalized_shape=[8])
    assert layer.input_names == ("input", "residual")
    assert layer.output_names == ("output", "residual_out")
    assert layer.sample_output_shape([8]) == (8,)
    x, r = _inputs((2, 8), np.float32)
    outs = (np.empty_like(x), np.empty_like(x))
    got = layer.apply_all([x, r], outs)
    assert got[0] is outs[0] and got[1] is outs[1]
    layer.warmup([np.dtype(np.float32)])
    assert layer.unfused_layer().kind == "layer_norm"
