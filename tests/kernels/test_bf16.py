"""bfloat16 on the CPU: the kernels take BF16 as its bits (row norms widen each row in cache,
the other kinds whole arrays) and must give exactly what widening in ml_dtypes, computing in
FP32 and rounding back in ml_dtypes gives: the conversions bit for bit, every kind bitwise."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from normserve import kernels
from normserve.kernels import cpu, cpu_jit, dtypes

BF16 = dtypes.BFLOAT16
pytestmark = pytest.mark.skipif(BF16 is None, reason="ml_dtypes is not installed")


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint16)


def test_widening_every_bfloat16_exactly():
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    wide = np.empty(bits.shape, np.float32)
    cpu.widen_bf16(bits, wide)
    expected = bits.view(BF16).astype(np.float32)
    np.testing.assert_array_equal(wide.view(np.uint32), expected.view(np.uint32))


SPECIAL = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7F7FFFFF, 0xFF7FFFFF,  # zeros, inf, max
           0x7FC00000, 0x7F800001, 0xFFBFFFFF, 0x7FFFFFFF,  # NaNs: quiet, signalling, payloads
           0x00000001, 0x00008000, 0x00018000, 0x007FFFFF,  # subnormals, ties among them
           0x3F808000, 0x3F818000, 0x3F807FFF, 0x3F808001,  # ties to even, either side
           0x7F7F8000, 0x7F7F7FFF]  # the largest tie rounds to inf


def test_rounding_to_nearest_even_as_ml_dtypes():
    rng = np.random.default_rng(0)
    words = rng.integers(0, 1 << 32, size=(1024, 1024), dtype=np.uint64).astype(np.uint32)
    words[0, : len(SPECIAL)] = SPECIAL
    values = words.view(np.float32)
    bits = np.empty(values.shape, np.uint16)
    cpu.narrow_bf16(values, bits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN casts
        expected = _bits(values.astype(BF16))
    np.testing.assert_array_equal(bits, expected)


def _through_fp32(layer, *inputs: np.ndarray) -> tuple[np.ndarray, ...]:
    """The definition: widen in ml_dtypes, run the FP32 layer, round in ml_dtypes."""
    wide = [a.astype(np.float32) for a in inputs]
    if len(wide) == 1:
        return (layer.apply(wide[0]).astype(BF16),)
    h = wide[0].astype(np.float64) + wide[1]
    if getattr(layer, "_skip", None) is not None:
        h += layer._skip
    h = h.astype(np.float32).astype(BF16)  # ml_dtypes rounds float64 through float32 too
    return layer.unfused_layer().apply(h.astype(np.float32)).astype(BF16), h


def _data(shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * rng.choice([1e-3, 1.0, 1e3], shape[0])[
        (slice(None),) + (None,) * (len(shape) - 1)]).astype(BF16)
    flat = x.reshape(shape[0], -1)
    flat[0, 0] = np.nan  # specials stay in their rows
    if shape[0] > 2:
        flat[2, -1] = np.inf
    return x


LAYERS = [
    ("layer_norm", {"weight": True, "bias": True}, {}),
    ("rms_norm", {"weight": True}, {}),
    ("rms_norm", {"weight": True}, {"offset": 1.0}),
    ("rms_norm", {}, {"eps": 1e-6}),
    ("add_rms_norm", {"weight": True}, {"offset": 1.0}),
    ("add_layer_norm", {"weight": True, "bias": True, "skip_bias": True}, {}),
    ("add_layer_norm", {}, {}),
]


@pytest.mark.parametrize("n", [7, 1031])  # many rows to a scratch block; three
@pytest.mark.parametrize("rows", [1, 17, 40])
@pytest.mark.parametrize(("kind", "which", "hyper"), LAYERS,
                         ids=[f"{k}-{'-'.join(w)}-{h}" for k, w, h in LAYERS])
@pytest.mark.parametrize("threaded", [False, True], ids=["serial", "threaded"])
def test_row_kinds_bitwise_through_fp32(kind, which, hyper, rows, n, threaded, monkeypatch):
    monkeypatch.setattr(cpu_jit, "_parallel_min_work", 1 if threaded else 1 << 40)
    rng = np.random.default_rng(rows)
    params = {name: rng.uniform(0.5, 1.5, n).astype(np.float32) for name in which}
    layer = kernels.prepare(kind, params, normalized_shape=[n], **hyper)
    inputs = [_data((rows, n), seed) for seed in range(1 + kind.startswith("add_"))]
    got = layer.apply(*inputs)
    got = got if isinstance(got, tuple) else (got,)
    for a, b in zip(got, _through_fp32(layer, *inputs), strict=True):
        assert a.dtype == BF16
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_fused_in_place_as_out_of_place():
    n = 257
    layer = kernels.prepare("add_rms_norm", {"weight": np.linspace(0.5, 1.5, n)},
                            normalized_shape=[n])
    x, r = _data((9, n), 1), _data((9, n), 2)
    y, h = layer.apply(x, r)
    layer.apply(x, r, out=x, residual_out=r)
    np.testing.assert_array_equal(_bits(x), _bits(y))
    np.testing.assert_array_equal(_bits(r), _bits(h))


@pytest.mark.parametrize(("kind", "params", "hyper", "shape"), [
    ("group_norm", {"weight": np.linspace(0.5, 1.5, 6), "bias": np.linspace(-1, 1, 6)},
     {"num_groups": 3}, (4, 6, 5, 7)),
    ("instance_norm", {}, {}, (3, 4, 33)),
    ("batch_norm", {"running_mean": np.linspace(-1, 1, 6), "running_var": np.linspace(0.5, 2, 6)},
     {}, (4, 6, 9)),
    ("weight_norm", {"weight_v": np.random.default_rng(0).standard_normal((35, 19)),
                     "weight_g": np.linspace(0.5, 2, 35).reshape(35, 1)}, {}, (29, 19)),
])
def test_other_kinds_bitwise_through_fp32(kind, params, hyper, shape):
    layer = kernels.prepare(kind, params, **hyper)
    x = _data(shape, 3)
    np.testing.assert_array_equal(_bits(layer.apply(x)), _bits(_through_fp32(layer, x)[0]))
