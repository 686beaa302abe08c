"""The maths of each kind as ONNX nodes, one builder per kind, native or decomposed.

Every builder takes the FP32 input tensor name and returns the FP32 output name. Forms:

- ``native``: the kind's own ONNX operator (LayerNormalization, RMSNormalization,
  GroupNormalization-21, InstanceNormalization); an OpsetError when the opset lacks it.
- ``stable``: a two-pass decomposition with float64 statistics, as the kernels compute them.
  It is what opsets without the operator get, and what ``auto`` picks where ONNX Runtime's
  operator is not accurate enough (GroupNormalization runs as its function body, which
  computes ``E[x^2] - E[x]^2`` and gives NaN on large-offset data; the CPU kernels of
  LayerNormalization and InstanceNormalization miss SPEC's 1e-3 on ``1e4 + N(0, 1)`` data).
- ``auto``: native where the runtime's operator holds the SPEC tolerances, stable elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .errors import ExportError, OpsetError
from .graph import DOUBLE, FLOAT, GraphBuilder
from .opsets import OPERATOR_SINCE, has_operator

FORMS = ("auto", "native", "stable")
#: Kinds whose native operator ONNX Runtime (CPU) computes less accurately than the SPEC asks.
AUTO_STABLE = frozenset({"layer_norm", "group_norm", "instance_norm"})

Builder = Callable[[GraphBuilder, object, str, tuple[int, ...], str], str]


def _native(g: GraphBuilder, kind: str, op: str, form: str, usable: bool = True) -> bool:
    """Whether to emit ``op``; an OpsetError when ``native`` was demanded but cannot be."""
    available = has_operator(op, g.opset) and usable
    if form == "native" and not available:
        why = (f"{op} needs opset {OPERATOR_SINCE[op]}" if not has_operator(op, g.opset)
               else f"{op} needs the channel count, which this layer leaves free")
        raise OpsetError(f"opset {g.opset} cannot express {kind} natively: {why}; "
                         f"export with form='auto' or 'stable' for a decomposition")
    native = available and form != "stable" and not (form == "auto" and kind in AUTO_STABLE)
    g.used_forms.add("native" if native else "stable")
    return native


def _two_pass(g: GraphBuilder, x: str, axes: list[int], eps: float, center: bool) -> str:
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


def _affine64(g: GraphBuilder, y: str, weight, bias, shape: tuple[int, ...]) -> str:
    """Scale and shift a float64 tensor, then round once to FP32."""
    if weight is not None:
        y = g.op("Mul", [y, g.initializer("weight", np.reshape(weight, shape), DOUBLE)],
                 "scaled")
    if bias is not None:
        y = g.op("Add", [y, g.initializer("bias", np.reshape(bias, shape), DOUBLE)], "shifted")
    return g.cast(y, FLOAT, "y32")


def _row_norm(g, layer, x, rank, form, *, op: str, center: bool) -> str:
    shape = layer.normalized_shape
    k = len(shape)
    eps = layer.eps_for(np.float32)
    bias = getattr(layer, "bias", None) if center else None
    if _native(g, layer.kind, op, form):
        ones = np.ones(shape) if layer.weight is None else layer.weight
        inputs = [x, g.initializer("weight", ones, FLOAT)]
        if bias is not None:
            inputs.append(g.initializer("bias", bias, FLOAT))
        return g.op(op, inputs, layer.kind, axis=rank - k, epsilon=eps, stash_type=1)
    y = _two_pass(g, x, list(range(rank - k, rank)), eps, center)
    return _affine64(g, y, layer.weight, bias, shape)


def layer_norm(g, layer, x, rank, form):
    return _row_norm(g, layer, x, rank, form, op="LayerNormalization", center=True)


def rms_norm(g, layer, x, rank, form):
    return _row_norm(g, layer, x, rank, form, op="RMSNormalization", center=False)


def batch_norm(g, layer, x, rank, form):
    """Folded ``x * scale + shift``; the stable form forms it in float64 as the kernel does."""
    shape = (layer.num_features,) + (1,) * (rank - 2)
    g.used_forms.add("stable" if form == "stable" else "native")
    if form == "stable":
        return _affine64(g, g.cast(x, DOUBLE, "x64"), layer.scale, layer.shift, shape)
    scale = g.initializer("scale", np.reshape(layer.scale, shape), FLOAT)
    shift = g.initializer("shift", np.reshape(layer.shift, shape), FLOAT)
    return g.op("Add", [g.op("Mul", [x, scale], "scaled"), shift], layer.kind)


def _channel_norm(g, layer, x, rank, form, *, op: str, groups: int | None) -> str:
    channels = layer.num_channels
    if _native(g, layer.kind, op, form, usable=channels is not None):
        w = np.ones(channels) if layer.weight is None else layer.weight
        b = np.zeros(channels) if layer.bias is None else layer.bias
        inputs = [x, g.initializer("weight", w, FLOAT), g.initializer("bias", b, FLOAT)]
        attrs = {"epsilon": layer.eps}
        if op == "GroupNormalization":
            attrs.update(num_groups=groups, stash_type=1)
        return g.op(op, inputs, layer.kind, **attrs)
    # (N, G, rest) rows, as the kernel reduces them; instance norm keeps C as G (0 = copy).
    grouped = g.op("Reshape", [x, g.ints("grouped_shape", [0, groups or 0, -1])], "grouped")
    y = _two_pass(g, grouped, [2], layer.eps, center=True)
    y = g.op("Reshape", [y, g.op("Shape", [x], "x_shape")], "ungrouped")
    shape = (-1,) + (1,) * (rank - 2)
    return _affine64(g, y, layer.weight, layer.bias, shape)


def group_norm(g, layer, x, rank, form):
    return _channel_norm(g, layer, x, rank, form, op="GroupNormalization",
                         groups=layer.num_groups)


def instance_norm(g, layer, x, rank, form):
    return _channel_norm(g, layer, x, rank, form, op="InstanceNormalization", groups=None)


def linear(g, layer, x, rank, form):
    """``x @ w.T + b`` with the normalised weight precomputed at load (weight/spectral norm).

    No statistics, so one form: FP32 MatMul, as the kernel (which sums in FP32 too).
    """
    g.used_forms.add("native")
    y = g.op("MatMul", [x, g.initializer("weight_t", layer.weight.T, FLOAT)], "matmul")
    if layer.bias is not None:
        y = g.op("Add", [y, g.initializer("bias", layer.bias, FLOAT)], layer.kind)
    return y


BUILDERS: dict[str, Builder] = {
    "layer_norm": layer_norm,
    "rms_norm": rms_norm,
    "batch_norm": batch_norm,
    "group_norm": group_norm,
    "instance_norm": instance_norm,
    "weight_norm": linear,
    "spectral_norm": linear,
}


def output_dims(layer, dims: tuple[int, ...]) -> tuple[int, ...]:
    """Per-sample output dims (``-1`` free) for per-sample input dims."""
    if layer.kind in ("weight_norm", "spectral_norm"):
        return (*dims[:-1], layer.out_features)
    return tuple(dims)


def builder_for(kind: str) -> Builder:
    try:
        return BUILDERS[kind]
    except KeyError:
        raise ExportError(f"no ONNX builder for kind {kind!r}; known: {sorted(BUILDERS)}") from None

