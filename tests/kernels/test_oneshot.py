"""The one-shot functions (SPEC section 2) against the prepared layer they stand for: the same
bits for every kind, parameter dtype and input dtype, the same errors; and a prepared layer
owns its parameters while a one-shot call only borrows them."""

from __future__ import annotations

import numpy as np
import pytest
from kernel_cases import DTYPES, ONE_INPUT_KINDS, make_case, sample_input

from normserve import kernels
from normserve.kernels import dtypes
from normserve.kernels.functional import BY_KIND

KINDS = ONE_INPUT_KINDS  # the fused kinds: test_fused*.py
# How callers hold parameters: torch's FP32, NumPy's FP64, FP16, plain lists.
PARAM_FORMS = {
    "fp32": lambda a: a.astype(np.float32),
    "fp64": lambda a: a,
    "fp16": lambda a: a.astype(np.float16),
    "fp32-strided": lambda a: np.repeat(a.astype(np.float32), 2, axis=-1)[..., ::2],
    "list": lambda a: a.tolist(),
}


def test_every_kind_has_a_one_shot_function():
    assert set(BY_KIND) == set(kernels.KINDS)


@pytest.mark.parametrize("form", sorted(PARAM_FORMS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind", KINDS)
def test_one_shot_is_bitwise_the_prepared_layer(kind, dtype, form):
    case = make_case(kind, 37)
    params = {k: PARAM_FORMS[form](v) for k, v in case.params.items()}
    x = sample_input(case, 5, dtype)
    expected = kernels.prepare(case.kind, params, **case.hyper).apply(x)
    got = BY_KIND[kind](x, **params, **case.hyper)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()
    out = np.empty_like(expected)
    assert BY_KIND[kind](x, **params, **case.hyper, out=out) is out
    assert out.tobytes() == expected.tobytes()


@pytest.mark.parametrize("kind", KINDS)
def test_prepared_layer_owns_its_parameters(kind):
    case = make_case(kind, 9)
    for form in ("fp32", "fp64"):  # FP32/FP64 arrays are the ones a layer could alias
        params = {k: PARAM_FORMS[form](v).copy() for k, v in case.params.items()}
        layer = kernels.prepare(case.kind, params, **case.hyper)
        x = sample_input(case, 3, np.dtype(form.replace("fp", "float")))
        before = layer.apply(x).copy()
        for value in params.values():
            value *= 3.0  # the caller reuses its arrays
        assert layer.apply(x).tobytes() == before.tobytes()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("form", ["fp32", "fp64", "fp16", "list"])
@pytest.mark.parametrize("kind", ["layer_norm", "rms_norm", "group_norm", "instance_norm"])
def test_non_finite_parameters_are_refused_by_name(kind, form, bad):
    case = make_case(kind, 6)
    params = {k: np.array(v) for k, v in case.params.items()}
    params["weight"][1] = bad
    params = {k: PARAM_FORMS[form](v) for k, v in params.items()}
    x = sample_input(case, 2, np.float32)
    with pytest.raises(ValueError, match=r"^weight contains NaN or Inf"):
        BY_KIND[kind](x, **params, **case.hyper)
    with pytest.raises(ValueError, match=r"^weight contains NaN or Inf"):
        kernels.prepare(kind, params, **case.hyper)


@pytest.mark.parametrize("kind", KINDS)
def test_params_are_float64_masters(kind):
    case = make_case(kind, 8)
    layer = kernels.prepare(case.kind, {k: PARAM_FORMS["fp32"](v)
                                        for k, v in case.params.items()}, **case.hyper)
    for name, value in layer.params.items():
        assert value is None or value.dtype == np.float64, name


def test_half_precision_inputs_compute_like_fp32():
    """FP16/BF16 inputs are widened at the boundary; the parameters take the same route."""
    case = make_case("layer_norm", 33)
    for dt in dtypes.HALF:
        x = sample_input(case, 4, dt)
        wide = kernels.layer_norm(x.astype(np.float32), [33], **case.params)
        assert kernels.layer_norm(x, [33], **case.params).tobytes() == wide.astype(dt).tobytes()
