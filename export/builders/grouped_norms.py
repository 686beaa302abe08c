"""Group norm and instance norm as ONNX: GroupNormalization-21 / InstanceNormalization, or
two passes over (N, G, rest) rows."""

from __future__ import annotations

import numpy as np

from ..graph import FLOAT, GraphBuilder
from .common import affine64, two_pass, use_native
from .registry import onnx_builder


def _channel_norm(g: GraphBuilder, layer, x: str, rank: int, form: str, *, op: str,
                  groups: int | None) -> str:
    channels = layer.num_channels
    if use_native(g, layer.kind, op, form, usable=channels is not None):
        w = np.ones(channels) if layer.weight is None else layer.weight
        b = np.zeros(channels) if layer.bias is None else layer.bias
        inputs = [x, g.initializer("weight", w, FLOAT), g.initializer("bias", b, FLOAT)]
        attrs = {"epsilon": layer.eps}
        if op == "GroupNormalization":
            attrs.update(num_groups=groups, stash_type=1)
        return g.op(op, inputs, layer.kind, **attrs)
    # (N, G, rest) rows, as the kernel reduces them; instance norm keeps C as G (0 = copy).
    grouped = g.op("Reshape", [x, g.ints("grouped_shape", [0, groups or 0, -1])], "grouped")
    y = two_pass(g, grouped, [2], layer.eps, center=True)
    y = g.op("Reshape", [y, g.op("Shape", [x], "x_shape")], "ungrouped")
    shape = (-1,) + (1,) * (rank - 2)
    return affine64(g, y, layer.weight, layer.bias, shape)


@onnx_builder("group_norm", auto_stable=True)
def group_norm(g, layer, x, rank, form):
    return _channel_norm(g, layer, x, rank, form, op="GroupNormalization",
                         groups=layer.num_groups)


@onnx_builder("instance_norm", auto_stable=True)
def instance_norm(g, layer, x, rank, form):
    return _channel_norm(g, layer, x, rank, form, op="InstanceNormalization", groups=None)
