"""The one oracle: each kind's float64 reference, and how close is close.

Every check of a result against float64 (the kernel tests, the CUDA tests, the service tests,
the exporter's parity attribution) goes through this module, so the SPEC tolerances are
written once. The maths is ``kernels.reference``'s; which call computes a kind is part of
the kind's declaration (``kernels.kinds``), an adapter that shares no code with the kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import dtypes
from .kinds import Kind, kinds

if TYPE_CHECKING:
    from .kinds import PreparedLayer

#: (atol, rtol) against the float64 reference: ``|y - ref| <= atol + rtol * |ref|``.
#: FP32 and FP16 are SPEC section 1's; FP64 and BF16 are not in the SPEC.
TOLERANCES: dict[np.dtype, tuple[float, float]] = {
    dtypes.FLOAT64: (1e-10, 1e-10),  # float64 against float64: only the summation order differs
    dtypes.FLOAT32: (1e-5, 1e-5),
    dtypes.FLOAT16: (2e-3, 2e-3),
}
if dtypes.BFLOAT16 is not None:
    TOLERANCES[dtypes.BFLOAT16] = (1.6e-2, 1.6e-2)  # 8 mantissa bits: one rounding is 2**-9

#: SPEC: a layer norm of ``1e4 + N(0, 1)`` data in FP32 matches float64 to this (absolute).
LARGE_OFFSET_TOLERANCE = 1e-3

Params = Mapping[str, Any]
Hyper = Mapping[str, Any]


def tolerance(dtype: Any) -> tuple[float, float]:
    """(atol, rtol) of ``dtype`` against the float64 reference; a KeyError for other dtypes."""
    return TOLERANCES[np.dtype(dtype)]


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype: Any, err_msg: str = "") -> None:
    """``actual`` has ``dtype`` and ``expected``'s shape and agrees with it within
    ``tolerance(dtype)``, elementwise (NaN only where ``expected`` has NaN)."""
    atol, rtol = tolerance(dtype)
    assert actual.dtype == np.dtype(dtype), f"{err_msg} dtype {actual.dtype}, not {dtype}"
    assert actual.shape == expected.shape, f"{err_msg} shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual.astype(np.float64), expected, rtol=rtol, atol=atol,
                               equal_nan=True, err_msg=err_msg)


def reference(kind: str, x: np.ndarray, params: Params, hyper: Hyper | None = None
              ) -> np.ndarray:
    """The float64 forward pass of ``kind`` on ``x`` from a state dict and hyper-parameters,
    as ``prepare`` takes them: the oracle that also checks a prepared layer's folding.

    Keys a kind does not read (config.json's ``input_shape``, ``max_batch_size``...) are
    ignored. Pass ``x`` in its own dtype: RMSNorm's default eps depends on it. A kind of
    several inputs (the fused norms) takes the tuple of them and returns the tuple of its
    outputs.
    """
    return _declared(kind).reference(x, params, hyper or {})


def reference_for(layer: PreparedLayer, x: np.ndarray) -> np.ndarray:
    """The float64 forward pass of a prepared layer from its float64 prepared ``params`` and
    ``hyper``, for when the state dict is gone (the exporter's parity): folded parameters are
    taken as given, so this checks the arithmetic, not the folding (``reference`` does)."""
    return _declared(layer.kind).prepared_reference()(x, layer.params, layer.hyper)


def _declared(kind: str) -> Kind:
    declared = kinds().get(kind) if isinstance(kind, str) else None
    if declared is None:
        raise ValueError(f"no float64 reference for kind {kind!r}")
    return declared
