"""Grouped norms: group norm, and instance norm (one channel per group): statistics per
(sample, group) over the group's channels and the spatial dimensions, affine per channel."""

from __future__ import annotations

import math

import numpy as np

from .. import reference as R
from .base import (
    AffineNorm,
    Params,
    channel_layer,
    channels_of,
    filled,
    positive_float,
    positive_int,
    reject_unknown,
)
from .registry import Benchmarks, Example, Kind, OnnxNode, Rng, Sizes, register


class GroupNorm(AffineNorm):
    """Group norm; instance norm is the case of one channel per group."""

    kind = "group_norm"
    param_names = frozenset({"weight", "bias"})

    def __init__(self, num_groups, weight=None, bias=None, eps=1e-5, num_channels=None,
                 device="cpu"):
        super().__init__(device)
        self.num_groups = positive_int(num_groups, "num_groups")
        self.eps = positive_float(eps, "eps")
        shapes = {k: np.shape(v) for k, v in (("weight", weight), ("bias", bias))
                  if v is not None}
        for name, given in shapes.items():
            if len(given) != 1:
                raise ValueError(f"{name} must be 1-D (one value per channel), got shape "
                                 f"{list(given)}")
            if num_channels is not None and num_channels != given[0]:
                raise ValueError(f"num_channels is {num_channels} but {name} has {given[0]} "
                                 "channels")
        if len(set(shapes.values())) > 1:
            raise ValueError(f"weight has shape {list(shapes['weight'])} and bias "
                             f"{list(shapes['bias'])}: they must match (one value per channel)")
        if shapes:
            num_channels = next(iter(shapes.values()))[0]
        self.num_channels = None if num_channels is None else positive_int(
            num_channels, "num_channels")
        if self.num_channels is not None and self.num_channels % self.num_groups:
            raise ValueError(f"num_groups ({self.num_groups}) must divide the number of "
                             f"channels ({self.num_channels})")
        shape = None if self.num_channels is None else (self.num_channels,)
        self._set_affine(weight, bias, shape)

    @classmethod
    def from_state_dict(cls, params: Params, num_groups=None, eps=1e-5, num_channels=None,
                        device="cpu"):
        reject_unknown(params, cls.param_names, cls.kind)
        if num_groups is None:
            raise ValueError("group_norm needs num_groups")
        return cls(num_groups, params.get("weight"), params.get("bias"), eps, num_channels,
                   device)

    @property
    def hyper(self):
        return {"num_groups": self.num_groups, "num_channels": self.num_channels,
                "eps": self.eps}

    @property
    def params(self):
        return {"weight": self.weight, "bias": self.bias}

    def groups_for(self, channels: int) -> int:
        return self.num_groups

    def output_shape(self, shape):
        c = channels_of(shape, self.kind)
        if self.num_channels is not None and c != self.num_channels:
            raise ValueError(f"x must have {self.num_channels} channels on axis 1, "
                             f"got shape {list(shape)}")
        if c % self.groups_for(c):
            raise ValueError(f"num_groups ({self.num_groups}) must divide x's channels ({c})")
        return tuple(shape)

    def _shape_key(self, shape):
        return (shape[1],)  # ones/zeros stand in for absent affine parameters, per channel

    def _kernel_params(self, shape):
        c = shape[1]
        return {"weight": filled(c, 1.0) if self._weight is None else self._weight,
                "bias": filled(c, 0.0) if self._bias is None else self._bias}

    def _run(self, be, x, out, p):
        n, c = x.shape[:2]
        groups = self.groups_for(c)
        spatial = math.prod(x.shape[2:])
        be.grouped_norm(x.reshape(n * groups, -1), out.reshape(n * groups, -1),
                        p["weight"], p["bias"], groups, spatial, self.eps)

    def example_shape(self):
        return self.sample_shape or (self.num_channels or self.num_groups, 3)


class InstanceNorm(GroupNorm):
    """Instance norm: per (sample, channel) statistics over the spatial dimensions."""

    kind = "instance_norm"

    def __init__(self, weight=None, bias=None, eps=1e-5, num_features=None, device="cpu"):
        super().__init__(1, weight, bias, eps, num_features, device)

    @classmethod
    def from_state_dict(cls, params: Params, eps=1e-5, num_features=None, device="cpu"):
        if params.get("running_mean") is not None or params.get("running_var") is not None:
            raise ValueError(
                "instance_norm with running statistics (track_running_stats=True) uses them in "
                "eval mode: serve it as kind batch_norm"
            )
        reject_unknown(params, cls.param_names, cls.kind)
        return cls(params.get("weight"), params.get("bias"), eps, num_features, device)

    @property
    def hyper(self):
        return {"num_features": self.num_channels, "eps": self.eps}

    def groups_for(self, channels):
        return channels

    def output_shape(self, shape):
        if len(shape) < 3:
            raise ValueError(f"x must be (batch, channels, spatial...) for instance_norm, "
                             f"got shape {list(shape)}")
        return super().output_shape(shape)

    def example_shape(self):
        return self.sample_shape or (self.num_channels or 2, 3)


def instance_norm(x, weight=None, bias=None, eps=1e-5, *, device="cpu", out=None):
    layer = channel_layer(lambda: InstanceNorm(weight, bias, eps, None, device), x,
                          {"weight": weight, "bias": bias})
    return layer.apply(x, out)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, device="cpu", out=None):
    layer = channel_layer(lambda: GroupNorm(num_groups, weight, bias, eps, None, device), x,
                          {"weight": weight, "bias": bias})
    return layer.apply(x, out)


def _example(grouped: bool):
    def example(rng: Rng, sizes: Sizes, affine: bool = True) -> Example:
        c = sizes.channels
        params = ({"weight": rng.uniform(0.5, 1.5, c), "bias": rng.uniform(-1.0, 1.0, c)}
                  if affine else {})
        hyper = {"num_groups": sizes.groups} if grouped else {}
        return Example(params, hyper, (c, *sizes.spatial), (c, *(-1 for _ in sizes.spatial)))

    return example


def _numpy_peer(layer: GroupNorm, x: np.ndarray):
    """Vectorised FP32 NumPy, two-pass statistics per (sample, group)."""
    n, c = x.shape[:2]
    groups = layer.groups_for(c)
    shape = (-1,) + (1,) * (x.ndim - 2)
    w, b = (None if v is None else v.astype(np.float32).reshape(shape)
            for v in (layer.weight, layer.bias))
    eps = np.float32(layer.eps)

    def run():
        xg = x.reshape(n, groups, -1)
        d = xg - xg.mean(axis=-1, keepdims=True)
        y = (d / np.sqrt((d * d).mean(axis=-1, keepdims=True) + eps)).reshape(x.shape)
        y = y if w is None else y * w
        return y if b is None else y + b

    return run


def _torch_group_norm(layer: GroupNorm, x, params):
    import torch.nn.functional as F

    return lambda: F.group_norm(x, layer.num_groups, params.get("weight"), params.get("bias"),
                                layer.eps)


def _torch_instance_norm(layer: InstanceNorm, x, params):
    import torch.nn.functional as F

    return lambda: F.instance_norm(x, None, None, params.get("weight"), params.get("bias"),
                                   True, 0.0, layer.eps)


def _onnx_group_norm(layer: GroupNorm, params):
    return OnnxNode("GroupNormalization", {k: params[k] for k in ("weight", "bias")},
                    {"num_groups": layer.num_groups, "epsilon": layer.eps})


def _onnx_instance_norm(layer: InstanceNorm, params):
    return OnnxNode("InstanceNormalization", {k: params[k] for k in ("weight", "bias")},
                    {"epsilon": layer.eps})


_BENCH = Benchmarks(cpu=(Sizes(batch=32, channels=256, groups=32, spatial=(28, 28)),),
                    cuda=Sizes(batch=32, channels=256, groups=32, spatial=(56, 56)),
                    cuda_quick=Sizes(batch=8, channels=256, groups=32, spatial=(56, 56)))


register(Kind(
    layer=InstanceNorm, functional=instance_norm, example=_example(grouped=False),
    reference=lambda x, p, h: R.instance_norm(x, p.get("weight"), p.get("bias"),
                                              h.get("eps", 1e-5)),
    numpy_peer=_numpy_peer, torch_peer=_torch_instance_norm, onnx_peer=_onnx_instance_norm,
    benchmarks=_BENCH))

register(Kind(
    layer=GroupNorm, functional=group_norm, example=_example(grouped=True),
    reference=lambda x, p, h: R.group_norm(x, h["num_groups"], p.get("weight"), p.get("bias"),
                                           h.get("eps", 1e-5)),
    numpy_peer=_numpy_peer, torch_peer=_torch_group_norm, onnx_peer=_onnx_group_norm,
    benchmarks=_BENCH))
