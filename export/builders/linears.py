"""Weight norm and spectral norm as ONNX: a MatMul with the weight normalised at load."""

from __future__ import annotations

from ..graph import FLOAT
from .registry import onnx_builder


@onnx_builder("weight_norm", "spectral_norm")
def linear(g, layer, x, rank, form):
    """``x @ w.T + b`` with the normalised weight precomputed at load.

    No statistics, so one form: FP32 MatMul, as the kernel (which sums in FP32 too).
    """
    g.used_forms.add("native")
    y = g.op("MatMul", [x, g.initializer("weight_t", layer.weight.T, FLOAT)], "matmul")
    if layer.bias is not None:
        y = g.op("Add", [y, g.initializer("bias", layer.bias, FLOAT)], layer.kind)
    return y
