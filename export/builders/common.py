"""What the kinds' ONNX builders share: choosing the native operator, the two-pass float64
statistics, and the float64 affine rounded once to FP32.

The stable two-pass form is what opsets without a kind's operator get, and what ``auto``
picks where ONNX Runtime's operator is not accurate enough (GroupNormalization runs as its
function body, which computes ``E[x^2] - E[x]^2`` and gives NaN on large-offset data; the CPU
kernels of LayerNormalization and InstanceNormalization miss SPEC's 1e-3 on ``1e4 + N(0, 1)``
data).
"""

from __future__ import annotations

import numpy as np

from ..errors import OpsetError
from ..graph import DOUBLE, FLOAT, GraphBuilder
from ..opsets import OPERATOR_SINCE, has_operator
from .registry import is_auto_stable


def use_native(g: GraphBuilder, kind: str, op: str, form: str, usable: bool = True) -> bool:
    """Whether to emit ``op``; an OpsetError when ``native`` was demanded but cannot be."""
    available = has_operator(op, g.opset) and usable
    if form == "native" and not available:
        why = (f"{op} needs opset {OPERATOR_SINCE[op]}" if not has_operator(op, g.opset)
               else f"{op} needs the channel count, which this layer leaves free")
        raise OpsetError(f"opset {g.opset} cannot express {kind} natively: {why}; "
                         f"export with form='auto' or 'stable' for a decomposition")
    native = available and form != "stable" and not (form == "auto" and is_auto_stable(kind))
    g.used_forms.add("native" if native else "stable")
    return native


def two_pass(g: GraphBuilder, x: str, axes: list[int], eps: float, center: bool) -> str:
    """``(x - mean) / sqrt(var + eps)`` (or RMS scaling) with float64 statistics.

    Reciprocal-then-Mul and ``d * d`` (not Div and Pow) keep ONNX Runtime's LayerNorm
    fusions from folding this back into its single-pass FP32 operator.
    """
    xd = g.cast(x, DOUBLE, "x64")
    d = g.op("Sub", [xd, g.reduce_mean(xd, axes, "mean")], "centered") if center else xd
    var = g.reduce_mean(g.op("Mul", [d, d], "square"), axes, "var")
    eps_t = g.initializer("eps", eps, DOUBLE)
    rstd = g.op("Reciprocal", [g.op("Sqrt", [g.op("Add", [var, eps_t], "var_eps")], "std")],
                "rstd")
    return g.op("Mul", [d, rstd], "normalized")


def affine64(g: GraphBuilder, y: str, weight, bias, shape: tuple[int, ...]) -> str:
    """Scale and shift a float64 tensor, then round once to FP32."""
    if weight is not None:
        y = g.op("Mul", [y, g.initializer("weight", np.reshape(weight, shape), DOUBLE)],
                 "scaled")
    if bias is not None:
        y = g.op("Add", [y, g.initializer("bias", np.reshape(bias, shape), DOUBLE)], "shifted")
    return g.cast(y, FLOAT, "y32")
