"""Batch norm as ONNX: its folded ``x * scale + shift``."""

from __future__ import annotations

import numpy as np

from ..graph import DOUBLE, FLOAT
from .common import affine64
from .registry import onnx_builder


@onnx_builder("batch_norm")
def batch_norm(g, layer, x, rank, form):
    """Folded ``x * scale + shift``; the stable form forms it in float64 as the kernel does."""
    shape = (layer.num_features,) + (1,) * (rank - 2)
    g.used_forms.add("stable" if form == "stable" else "native")
    if form == "stable":
        return affine64(g, g.cast(x, DOUBLE, "x64"), layer.scale, layer.shift, shape)
    scale = g.initializer("scale", np.reshape(layer.scale, shape), FLOAT)
    shift = g.initializer("shift", np.reshape(layer.shift, shape), FLOAT)
    return g.op("Add", [g.op("Mul", [x, scale], "scaled"), shift], layer.kind)
