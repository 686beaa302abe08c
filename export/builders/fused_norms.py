"""The fused norms as ONNX: ``Add`` then the row norm's graph, two graph outputs; or, with
``ort_fused``, ONNX Runtime's ``com.microsoft`` SkipLayerNormalization family as one node.

The standard graph rounds ``h`` to the I/O dtype before the norm reads it, as the kernels do
(an FP16 graph computes in FP32). ONNX Runtime's fused operators read the FP32 sum instead:
within the FP16 tolerance, and the only form that runs as one node.
"""

from __future__ import annotations

import math

import numpy as np

from ..graph import DOUBLE, FLOAT, GraphBuilder
from .registry import onnx_builder
from .row_norms import layer_norm, rms_norm

CONTRIB = "com.microsoft"


def _residual_sum(g: GraphBuilder, layer, x: str, residual: str) -> str:
    """``h`` as the kernels form it: ``x + residual`` one FP32 add, or with a skip bias the
    three terms summed in float64; rounded once to the I/O dtype, then read as FP32."""
    skip = layer.skip_bias
    if skip is None:
        h = g.op("Add", [x, residual], "residual_sum")
        rounded = h if g.io_type == FLOAT else g.cast(h, g.io_type, "h_rounded")
    else:
        h = g.op("Add", [g.cast(x, DOUBLE, "x64"), g.cast(residual, DOUBLE, "residual64")],
                 "residual_sum64")
        h = g.op("Add", [h, g.initializer("skip_bias", skip.reshape(layer.normalized_shape),
                                          DOUBLE)], "residual_sum64")
        rounded = g.cast(h, g.io_type, "h_rounded")
    return rounded if g.io_type == FLOAT else g.cast(rounded, FLOAT, "h32")


def _contrib(g: GraphBuilder, layer, x: str, residual: str) -> tuple[str, str]:
    """SkipSimplifiedLayerNormalization / SkipLayerNormalization: outputs 0 and 3 (``h``).
    Their ``epsilon`` defaults to 1e-12, so it is always set."""
    n = math.prod(layer.normalized_shape)
    w = layer.effective_weight()
    inputs = [x, residual, g.initializer("gamma", [1.0] * n if w is None else w.reshape(n),
                                         FLOAT)]
    if layer.center:
        op = "SkipLayerNormalization"
        b, skip = layer.bias, layer.skip_bias
        inputs.append(g.initializer("beta", [0.0] * n if b is None else b.reshape(n), FLOAT))
        if skip is not None:
            inputs.append(g.initializer("skip_bias", skip.reshape(n), FLOAT))
    else:
        op = "SkipSimplifiedLayerNormalization"
    g.used_forms.add("ort-fused")
    y, h = g.multi(op, inputs, ["y", None, None, "h"], CONTRIB,
                   epsilon=layer.eps_for(np.float32))
    return y, h


def _fused(g: GraphBuilder, layer, xs: tuple[str, str], rank: int, form: str, norm
           ) -> tuple[str, str]:
    x, residual = xs
    if g.ort_fused and len(layer.normalized_shape) == 1:
        return _contrib(g, layer, x, residual)
    h = _residual_sum(g, layer, x, residual)
    return norm(g, layer, h, rank, form), h


@onnx_builder("add_rms_norm")
def add_rms_norm(g, layer, xs, rank, form):
    return _fused(g, layer, xs, rank, form, rms_norm)


@onnx_builder("add_layer_norm", auto_stable=True)
def add_layer_norm(g, layer, xs, rank, form):
    return _fused(g, layer, xs, rank, form, layer_norm)
