"""Batch norm in eval mode: running statistics folded at load into a per-channel affine."""

from __future__ import annotations

import numpy as np

from .. import reference as R
from .base import (
    Params,
    PreparedLayer,
    as_array,
    channel_layer,
    channels_of,
    optional_array,
    positive_float,
    reject_unknown,
)
from .registry import Benchmarks, Example, Kind, OnnxNode, Rng, Sizes, register


class BatchNorm(PreparedLayer):
    """Eval-mode batch norm, folded at load to ``y = x * scale + shift`` per channel."""

    kind = "batch_norm"
    param_names = frozenset({"running_mean", "running_var", "weight", "bias"})

    def __init__(self, running_mean, running_var, weight=None, bias=None, eps=1e-5,
                 device="cpu"):
        super().__init__(device)
        self.eps = positive_float(eps, "eps")
        mean = as_array(running_mean, "running_mean", ndim=1)
        var = as_array(running_var, "running_var", ndim=1)
        if var.shape != mean.shape:
            raise ValueError(f"running_var has shape {list(var.shape)}, running_mean "
                             f"{list(mean.shape)}: they must match")
        if np.any(var < 0):
            raise ValueError("running_var must be non-negative")
        w = optional_array(weight, "weight", mean.shape)
        b = optional_array(bias, "bias", mean.shape)
        self.num_features = mean.shape[0]
        self.scale = (1.0 if w is None else w) / np.sqrt(var + self.eps)
        self.shift = (0.0 if b is None else b) - mean * self.scale

    @classmethod
    def from_state_dict(cls, params: Params, eps=1e-5, num_features=None, device="cpu"):
        reject_unknown(params, cls.param_names, cls.kind)
        for name in ("running_mean", "running_var"):
            if params.get(name) is None:
                raise ValueError(f"batch_norm needs the parameter {name}")
        layer = cls(params["running_mean"], params["running_var"], params.get("weight"),
                    params.get("bias"), eps, device)
        if num_features is not None and num_features != layer.num_features:
            raise ValueError(f"num_features is {num_features} but the parameters have "
                             f"{layer.num_features} channels")
        return layer

    @property
    def hyper(self):
        return {"eps": self.eps, "num_features": self.num_features}

    @property
    def params(self):
        return {"scale": self.scale, "shift": self.shift}

    def output_shape(self, shape):
        if channels_of(shape, self.kind) != self.num_features:
            raise ValueError(f"x must have {self.num_features} channels on axis 1, "
                             f"got shape {list(shape)}")
        return tuple(shape)

    def _params_for(self, dtype, shape):
        # The folded scale/shift stay float64 for FP32 data: the product rounds once.
        return super()._params_for(np.dtype(np.float64), shape)

    def _run(self, be, x, out, p):
        n, c = x.shape[:2]
        be.channel_affine(x.reshape(n, c, -1), out.reshape(n, c, -1), p["scale"], p["shift"])

    def example_shape(self):
        return self.sample_shape or (self.num_features,)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, eps=1e-5, *,
               device="cpu", out=None):
    layer = channel_layer(
        lambda: BatchNorm(running_mean, running_var, weight, bias, eps, device), x,
        {"running_mean": running_mean, "running_var": running_var, "weight": weight,
         "bias": bias})
    return layer.apply(x, out)


def _example(rng: Rng, sizes: Sizes, affine: bool = True) -> Example:
    c = sizes.channels
    params = {"running_mean": rng.uniform(-1.0, 1.0, c), "running_var": rng.uniform(0.2, 2.0, c)}
    if affine:
        params |= {"weight": rng.uniform(0.5, 1.5, c), "bias": rng.uniform(-1.0, 1.0, c)}
    return Example(params, {}, (c, *sizes.spatial), (c, *(-1 for _ in sizes.spatial)))


def _numpy_peer(layer: BatchNorm, x: np.ndarray):
    """``x * scale + shift`` in FP32 NumPy, per channel."""
    shape = (-1,) + (1,) * (x.ndim - 2)
    scale = layer.scale.astype(np.float32).reshape(shape)
    shift = layer.shift.astype(np.float32).reshape(shape)
    return lambda: x * scale + shift


def _torch_peer(layer: BatchNorm, x, params):
    import torch.nn.functional as F

    return lambda: F.batch_norm(x, params["running_mean"], params["running_var"],
                                params.get("weight"), params.get("bias"), False, 0.0, layer.eps)


def _onnx_peer(layer: BatchNorm, params):
    names = ("weight", "bias", "running_mean", "running_var")
    return OnnxNode("BatchNormalization", {k: params[k] for k in names}, {"epsilon": layer.eps})


register(Kind(
    layer=BatchNorm, functional=batch_norm, example=_example,
    reference=lambda x, p, h: R.batch_norm(x, p["running_mean"], p["running_var"],
                                           p.get("weight"), p.get("bias"), h.get("eps", 1e-5)),
    # Folded: a batch norm of zero mean, unit variance and eps 0, exactly.
    folded_reference=lambda x, p, h: R.batch_norm(x, np.zeros_like(p["scale"]),
                                                  np.ones_like(p["scale"]), p["scale"],
                                                  p["shift"], eps=0.0),
    numpy_peer=_numpy_peer, torch_peer=_torch_peer, onnx_peer=_onnx_peer,
    benchmarks=Benchmarks(
        cpu=(Sizes(batch=64, channels=256, spatial=(28, 28)),),
        cuda=Sizes(batch=32, channels=256, spatial=(56, 56)),
        cuda_quick=Sizes(batch=8, channels=256, spatial=(56, 56)))))
