"""The one oracle: which ``kernels.reference`` call computes each kind, and how close is close.

Every check of a result against float64 (the kernel tests, the CUDA tests, the service tests,
the exporter's parity attribution) goes through this module, so the kind -> reference call
and the SPEC tolerances are written once. The maths is ``kernels.reference``'s; this module
only picks the call and its arguments, and shares no code with the kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from . import dtypes
from . import reference as R

if TYPE_CHECKING:
    from .layers import PreparedLayer

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
Rule = Callable[[np.ndarray, Params, Hyper], np.ndarray]


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


# Each kind from its definition: torch's (classic) state-dict names and hyper-parameters,
# reference.py's defaults (torch's) for the hyper-parameters not given.
_DEFINITIONS: dict[str, Rule] = {
    "layer_norm": lambda x, p, h: R.layer_norm(x, h["normalized_shape"], p.get("weight"),
                                               p.get("bias"), h.get("eps", 1e-5)),
    "rms_norm": lambda x, p, h: R.rms_norm(x, h["normalized_shape"], p.get("weight"),
                                           h.get("eps")),
    "batch_norm": lambda x, p, h: R.batch_norm(x, p["running_mean"], p["running_var"],
                                               p.get("weight"), p.get("bias"),
                                               h.get("eps", 1e-5)),
    "instance_norm": lambda x, p, h: R.instance_norm(x, p.get("weight"), p.get("bias"),
                                                     h.get("eps", 1e-5)),
    "group_norm": lambda x, p, h: R.group_norm(x, h["num_groups"], p.get("weight"),
                                               p.get("bias"), h.get("eps", 1e-5)),
    "weight_norm": lambda x, p, h: R.weight_norm_linear(x, p["weight_v"], p["weight_g"],
                                                        p.get("bias"), h.get("dim", 0)),
    "spectral_norm": lambda x, p, h: R.spectral_norm_linear(x, p["weight_orig"], p.get("bias"),
                                                            p.get("weight_u"),
                                                            p.get("weight_v")),
}

# The kinds whose prepared parameters are folded (so no longer state-dict names): batch norm
# to ``x * scale + shift`` (a batch norm of zero mean, unit variance and eps 0, exactly), the
# linear kinds to their normalised weight.
_FOLDED: dict[str, Rule] = {
    "batch_norm": lambda x, p, h: R.batch_norm(x, np.zeros_like(p["scale"]),
                                               np.ones_like(p["scale"]), p["scale"],
                                               p["shift"], eps=0.0),
    "weight_norm": lambda x, p, h: R.linear(x, p["weight"], p["bias"]),
    "spectral_norm": lambda x, p, h: R.linear(x, p["weight"], p["bias"]),
}
_PREPARED: dict[str, Rule] = {**_DEFINITIONS, **_FOLDED}


def reference(kind: str, x: np.ndarray, params: Params, hyper: Hyper | None = None
              ) -> np.ndarray:
    """The float64 forward pass of ``kind`` on ``x`` from a state dict and hyper-parameters,
    as ``prepare`` takes them: the oracle that also checks a prepared layer's folding.

    Keys a kind does not read (config.json's ``input_shape``, ``max_batch_size``...) are
    ignored. Pass ``x`` in its own dtype: RMSNorm's default eps depends on it.
    """
    return _rule(kind, _DEFINITIONS)(x, params, hyper or {})


def reference_for(layer: PreparedLayer, x: np.ndarray) -> np.ndarray:
    """The float64 forward pass of a prepared layer from its float64 prepared ``params`` and
    ``hyper``, for when the state dict is gone (the exporter's parity): folded parameters are
    taken as given, so this checks the arithmetic, not the folding (``reference`` does)."""
    return _rule(layer.kind, _PREPARED)(x, layer.params, layer.hyper)


def _rule(kind: str, table: Mapping[str, Rule]) -> Rule:
    if kind not in table:
        raise ValueError(f"no float64 reference for kind {kind!r}")
    return table[kind]
