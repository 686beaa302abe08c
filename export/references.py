"""Float64 results of a prepared layer from ``kernels.reference`` (no kernel code shared).

Used to attribute a parity gap to the graph or to the kernel.
"""

from __future__ import annotations

import numpy as np

from normserve.kernels import reference


def float64_reference(layer, x: np.ndarray) -> np.ndarray:
    """The layer's forward pass on ``x`` in float64, from its prepared parameters."""
    x64 = np.asarray(x, dtype=np.float64)
    kind = layer.kind
    if kind == "layer_norm":
        return reference.layer_norm(x64, layer.normalized_shape, layer.weight, layer.bias,
                                    layer.eps)
    if kind == "rms_norm":
        return reference.rms_norm(x64, layer.normalized_shape, layer.weight,
                                  layer.eps_for(np.float32 if x.dtype != np.float64 else x.dtype))
    if kind == "batch_norm":
        shape = (1, -1) + (1,) * (x64.ndim - 2)
        return x64 * layer.scale.reshape(shape) + layer.shift.reshape(shape)
    if kind == "group_norm":
        return reference.group_norm(x64, layer.num_groups, layer.weight, layer.bias, layer.eps)
    if kind == "instance_norm":
        return reference.instance_norm(x64, layer.weight, layer.bias, layer.eps)
    if kind in ("weight_norm", "spectral_norm"):
        y = x64 @ layer.weight.T
        return y if layer.bias is None else y + layer.bias
    raise ValueError(f"no float64 reference for kind {kind!r}")
