"""Layer norm and RMSNorm as ONNX: LayerNormalization / RMSNormalization, or two passes."""

from __future__ import annotations

import numpy as np

from ..graph import FLOAT, GraphBuilder
from .common import affine64, two_pass, use_native
from .registry import onnx_builder


def _row_norm(g: GraphBuilder, layer, x: str, rank: int, form: str, *, op: str,
              center: bool) -> str:
    shape = layer.normalized_shape
    k = len(shape)
    eps = layer.eps_for(np.float32)
    bias = getattr(layer, "bias", None) if center else None
    weight = layer.effective_weight()  # RMSNorm's offset folded in FP32
    if use_native(g, layer.kind, op, form):
        ones = np.ones(shape) if weight is None else weight
        inputs = [x, g.initializer("weight", ones, FLOAT)]
        if bias is not None:
            inputs.append(g.initializer("bias", bias, FLOAT))
        return g.op(op, inputs, layer.kind, axis=rank - k, epsilon=eps, stash_type=1)
    y = two_pass(g, x, list(range(rank - k, rank)), eps, center)
    return affine64(g, y, weight, bias, shape)


@onnx_builder("layer_norm", auto_stable=True)
def layer_norm(g, layer, x, rank, form):
    return _row_norm(g, layer, x, rank, form, op="LayerNormalization", center=True)


@onnx_builder("rms_norm")
def rms_norm(g, layer, x, rank, form):
    return _row_norm(g, layer, x, rank, form, op="RMSNormalization", center=False)
