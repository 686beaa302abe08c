"""The one-shot functional API (SPEC section 2): prepare a layer, apply it once.

The same prepared layer runs, so results are bitwise the prepared layer's. Callers that
apply the same parameters repeatedly should keep a prepared layer instead
(``kernels.prepare``): it folds, casts and uploads parameters once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from . import layers


def _per_channel(x: Any, params: dict[str, Any]) -> None:
    """Raise a ValueError naming the per-channel parameter that disagrees with ``x``.

    Only called once building the layer has failed: the layer alone can say that its
    parameters disagree with each other, but not which one is wrong; ``x`` can.
    """
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 2:
        return
    c = shape[1]
    for name, value in params.items():
        # Only a 1-D parameter of another length: any other fault is the layer's to name.
        if value is not None and np.ndim(value) == 1 and np.shape(value) != (c,):
            raise ValueError(f"{name} must have shape [{c}] (x has {c} channels on axis 1), "
                             f"got {list(np.shape(value))}")


def _channel_layer(build: Callable[[], layers.PreparedLayer], x: Any,
                   params: dict[str, Any]) -> layers.PreparedLayer:
    try:
        return build()
    except ValueError:
        _per_channel(x, params)
        raise


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, device="cpu",
               out=None):
    return layers.LayerNorm(normalized_shape, weight, bias, eps, device).apply(x, out)


def rms_norm(x, normalized_shape, weight=None, eps=None, *, device="cpu", out=None):
    return layers.RMSNorm(normalized_shape, weight, eps, device).apply(x, out)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, eps=1e-5, *,
               device="cpu", out=None):
    layer = _channel_layer(
        lambda: layers.BatchNorm(running_mean, running_var, weight, bias, eps, device), x,
        {"running_mean": running_mean, "running_var": running_var, "weight": weight,
         "bias": bias})
    return layer.apply(x, out)


def instance_norm(x, weight=None, bias=None, eps=1e-5, *, device="cpu", out=None):
    layer = _channel_layer(lambda: layers.InstanceNorm(weight, bias, eps, None, device), x,
                           {"weight": weight, "bias": bias})
    return layer.apply(x, out)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, device="cpu", out=None):
    layer = _channel_layer(
        lambda: layers.GroupNorm(num_groups, weight, bias, eps, None, device), x,
        {"weight": weight, "bias": bias})
    return layer.apply(x, out)


def weight_norm_linear(x, weight_v, weight_g, bias=None, dim=0, *, device="cpu", out=None):
    return layers.WeightNormLinear(weight_v, weight_g, bias, dim, device).apply(x, out)


def spectral_norm_linear(x, weight_orig, bias=None, weight_u=None, weight_v=None, *,
                         device="cpu", out=None):
    layer = layers.SpectralNormLinear(weight_orig, bias, weight_u, weight_v, device)
    return layer.apply(x, out)


def spectral_sigma(weight_orig, weight_u=None, weight_v=None) -> float:
    """sigma(W) as the spectral-norm layer uses it (see ``layers.spectral_sigma``)."""
    return layers.spectral_sigma(weight_orig, weight_u, weight_v)


#: Each kind's one-shot function, called as ``BY_KIND[kind](x, **state_dict, **hyper)``.
BY_KIND: dict[str, Callable[..., Any]] = {
    "layer_norm": layer_norm, "rms_norm": rms_norm, "batch_norm": batch_norm,
    "instance_norm": instance_norm, "group_norm": group_norm,
    "weight_norm": weight_norm_linear, "spectral_norm": spectral_norm_linear,
}

__all__ = [
    "BY_KIND",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "spectral_norm_linear",
    "spectral_sigma",
    "weight_norm_linear",
]
