"""The one-shot functional API (SPEC section 2): prepare a layer, apply it once.

Callers that apply the same parameters repeatedly should keep a prepared layer instead
(``kernels.prepare``): it folds, casts and uploads parameters once.
"""

from __future__ import annotations

from typing import Any

from . import layers


def _run(layer: layers.PreparedLayer, x: Any, out: Any) -> Any:
    return layer.apply(x, out)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, device="cpu",
               out=None):
    return _run(layers.LayerNorm(normalized_shape, weight, bias, eps, device), x, out)


def rms_norm(x, normalized_shape, weight=None, eps=None, *, device="cpu", out=None):
    return _run(layers.RMSNorm(normalized_shape, weight, eps, device), x, out)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, eps=1e-5, *,
               device="cpu", out=None):
    return _run(layers.BatchNorm(running_mean, running_var, weight, bias, eps, device), x, out)


def instance_norm(x, weight=None, bias=None, eps=1e-5, *, device="cpu", out=None):
    return _run(layers.InstanceNorm(weight, bias, eps, None, device), x, out)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, device="cpu", out=None):
    return _run(layers.GroupNorm(num_groups, weight, bias, eps, None, device), x, out)


def weight_norm_linear(x, weight_v, weight_g, bias=None, dim=0, *, device="cpu", out=None):
    return _run(layers.WeightNormLinear(weight_v, weight_g, bias, dim, device), x, out)


def spectral_norm_linear(x, weight_orig, bias=None, weight_u=None, weight_v=None, *,
                         device="cpu", out=None):
    layer = layers.SpectralNormLinear(weight_orig, bias, weight_u, weight_v, device)
    return _run(layer, x, out)


def spectral_sigma(weight_orig, weight_u=None, weight_v=None) -> float:
    """sigma(W) as the spectral-norm layer uses it (see ``layers.spectral_sigma``)."""
    return layers.spectral_sigma(weight_orig, weight_u, weight_v)


__all__ = [
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "spectral_norm_linear",
    "spectral_sigma",
    "weight_norm_linear",
]
