"""Plain float64 NumPy references of every forward pass: the oracle the kernels are tested against.

Written for readability, straight from the definitions (PyTorch's eval-mode modules), and
sharing no code with the kernels or the prepared layers.
"""

from __future__ import annotations

import numpy as np


def _f64(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.asarray(a, dtype=np.float64)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5) -> np.ndarray:
    x = _f64(x)
    axes = tuple(range(x.ndim - len(tuple(normalized_shape)), x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * _f64(weight)
    if bias is not None:
        y = y + _f64(bias)
    return y


def rms_norm(x, normalized_shape, weight=None, eps=None, offset=0.0) -> np.ndarray:
    """``x / rms(x) * (offset + weight)``, the weight taken as ones when absent."""
    if eps is None:
        eps = np.finfo(np.float64 if np.asarray(x).dtype == np.float64 else np.float32).eps
    x = _f64(x)
    axes = tuple(range(x.ndim - len(tuple(normalized_shape)), x.ndim))
    y = x / np.sqrt((x**2).mean(axis=axes, keepdims=True) + eps)
    return y * (offset + (1.0 if weight is None else _f64(weight)))


def _residual_sum(x, residual, skip_bias=None) -> np.ndarray:
    """``x + residual (+ skip_bias)`` in float64, rounded once to the inputs' dtype (the
    contract: the norm reads the rounded sum), returned as float64."""
    h = _f64(x) + _f64(residual)
    if skip_bias is not None:
        h = h + _f64(skip_bias)
    return h.astype(np.asarray(x).dtype).astype(np.float64)


def add_rms_norm(x, residual, normalized_shape, weight=None, eps=None, offset=0.0):
    """(rms_norm(h), h) with ``h = x + residual`` rounded once (eps from ``x``'s dtype)."""
    if eps is None:
        eps = np.finfo(np.float64 if np.asarray(x).dtype == np.float64 else np.float32).eps
    h = _residual_sum(x, residual)
    return rms_norm(h, normalized_shape, weight, eps, offset), h


def add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, skip_bias=None,
                   eps=1e-5):
    """(layer_norm(h), h) with ``h = x + residual + skip_bias`` rounded once."""
    h = _residual_sum(x, residual, skip_bias)
    return layer_norm(h, normalized_shape, weight, bias, eps), h


def _per_channel(p: np.ndarray, ndim: int) -> np.ndarray:
    return _f64(p).reshape((1, -1) + (1,) * (ndim - 2))


def batch_norm(x, running_mean, running_var, weight=None, bias=None, eps=1e-5) -> np.ndarray:
    x = _f64(x)
    y = (x - _per_channel(running_mean, x.ndim)) / np.sqrt(_per_channel(running_var, x.ndim) + eps)
    if weight is not None:
        y = y * _per_channel(weight, x.ndim)
    if bias is not None:
        y = y + _per_channel(bias, x.ndim)
    return y


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5) -> np.ndarray:
    x = _f64(x)
    n = x.shape[0]
    g = x.reshape(n, num_groups, -1)
    mean = g.mean(axis=2, keepdims=True)
    var = ((g - mean) ** 2).mean(axis=2, keepdims=True)
    y = ((g - mean) / np.sqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        y = y * _per_channel(weight, x.ndim)
    if bias is not None:
        y = y + _per_channel(bias, x.ndim)
    return y


def instance_norm(x, weight=None, bias=None, eps=1e-5) -> np.ndarray:
    return group_norm(x, np.asarray(x).shape[1], weight, bias, eps)


def weight_norm_weight(weight_v, weight_g, dim=0) -> np.ndarray:
    v = _f64(weight_v)
    axes = tuple(a for a in range(v.ndim) if a != dim % v.ndim)
    return _f64(weight_g) * v / np.sqrt((v**2).sum(axis=axes, keepdims=True))


def linear(x, weight, bias=None) -> np.ndarray:
    """``x @ weight.T + bias``: the linear layer the weight-normalised kinds end in."""
    y = _f64(x) @ _f64(weight).T
    return y if bias is None else y + _f64(bias)


def weight_norm_linear(x, weight_v, weight_g, bias=None, dim=0) -> np.ndarray:
    return linear(x, weight_norm_weight(weight_v, weight_g, dim), bias)


def spectral_sigma(weight_orig, weight_u=None, weight_v=None) -> float:
    """sigma = u . (W v) from stored u, v (torch eval mode), else the largest singular value."""
    w = _f64(weight_orig).reshape(np.asarray(weight_orig).shape[0], -1)
    if weight_u is not None and weight_v is not None:
        return float(_f64(weight_u) @ (w @ _f64(weight_v)))
    return float(np.linalg.svd(w, compute_uv=False)[0])


def spectral_norm_linear(x, weight_orig, bias=None, weight_u=None, weight_v=None) -> np.ndarray:
    return linear(x, _f64(weight_orig) / spectral_sigma(weight_orig, weight_u, weight_v), bias)
