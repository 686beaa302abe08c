"""Prepared layers: one class per kind, shared by the functional API, the exporter and the service.

A prepared layer validates its parameters once, folds or precomputes what eval mode allows
(batch norm's scale and shift, weight norm's ``w``, spectral norm's ``sigma``), keeps them as
float64 masters (``params``), casts them once per compute dtype and device, and applies itself
to inputs of any supported dtype. The arithmetic lives in the backends (``kernels.cpu`` and,
when installed, ``kernels.cuda``); this module holds what the two have in common.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import cache
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from . import dtypes
from .checks import all_finite
from .cpu_jit import parallel_min_work
from .devices import backend_for, resolve_device

Params = Mapping[str, Any]
_MAX_CAST_ENTRIES = 32
_MACHINE_EPS = {dt: float(np.finfo(dt).eps) for dt in set(dtypes.COMPUTE.values())}


def _array(value: Any, name: str, ndim: int | None = None, exact: bool = False) -> np.ndarray:
    """A parameter as a finite float64 array, or a ValueError naming it.

    ``exact``: an FP32 or FP64 NumPy array is returned as it is, not widened: for parameters
    that the kernels only cast to their compute dtype, where widening first changes no bit,
    and a one-shot call would pay for a copy it then drops.
    """
    if exact and type(value) is np.ndarray and value.dtype.char in "fd":
        arr = value
    else:
        if not isinstance(value, np.ndarray) and hasattr(value, "detach"):  # torch tensor
            value = value.detach().cpu().float().numpy()
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a numeric array ({exc})") from None
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {arr.shape}")
    if not all_finite(arr):
        raise ValueError(f"{name} contains NaN or Inf")
    return arr


def _f64(arr: np.ndarray | None) -> np.ndarray | None:
    """A parameter kept exact (see ``_array``) as the float64 master ``params`` promises."""
    return None if arr is None else np.asarray(arr, dtype=np.float64)


def _as_kernel_array(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``value`` as a C-contiguous ``dtype`` array; itself when it is one already (NumPy's
    own check costs ~10 us with cold caches, these attribute reads less)."""
    if value.dtype is dtype and value.flags.c_contiguous:
        return value
    return np.ascontiguousarray(value, dtype=dtype)


@cache
def _filled(n: int, value: float) -> np.ndarray:
    """A read-only FP32 vector standing in for an absent weight (1) or bias (0): exact in
    every compute dtype, so FP32 kernels take it without a cast, and built once per size."""
    arr = np.full(n, value, np.float32)
    arr.flags.writeable = False
    return arr


def _optional(value: Any, name: str, shape: tuple[int, ...] | None,
              exact: bool = False) -> np.ndarray | None:
    """An optional parameter (None stays None) checked by ``_array`` and, when given, its
    shape."""
    if value is None:
        return None
    arr = _array(value, name, exact=exact)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(arr.shape)}")
    return arr


def _positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if type(value) in (list, tuple) and value and all(type(v) is int and v > 0 for v in value):
        return tuple(value)  # the common case, without the generic checks below
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (Sequence, np.ndarray)) or isinstance(value, str) or not len(value):
        raise TypeError(f"{name} must be a non-empty list of positive integers, got {value!r}")
    return tuple(_positive_int(v, f"{name}[{i}]") for i, v in enumerate(value))


def _reject_unknown(params: Params, known: set[str], kind: str) -> None:
    unknown = sorted(set(params) - known - {"num_batches_tracked"})
    if unknown:
        raise ValueError(
            f"unknown parameter(s) for {kind}: {', '.join(unknown)}; expected {sorted(known)}"
        )


class PreparedLayer(ABC):
    """A normalisation layer ready to run: parameters checked, folded and cached per dtype."""

    kind: ClassVar[str]
    #: The per-sample shape a layer fixes (``-1`` for a free dimension), or None.
    sample_shape: tuple[int, ...] | None = None

    def __init__(self, device: str = "cpu") -> None:
        self.device = resolve_device(device)
        self._backend: ModuleType = backend_for(self.device)
        self._cast: dict[tuple[str, np.dtype], Any] = {}

    # --- what subclasses provide -------------------------------------------------------
    @property
    @abstractmethod
    def hyper(self) -> dict[str, Any]:
        """Hyper-parameters, JSON-ready, as config.json names them (without ``kind``)."""

    @property
    @abstractmethod
    def params(self) -> dict[str, np.ndarray | None]:
        """The prepared (folded / precomputed) float64 parameters the kernels use."""

    @abstractmethod
    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Output shape for an input shape, or a ValueError saying what does not fit."""

    @abstractmethod
    def _run(self, be: ModuleType, x: Any, out: Any, p: dict[str, Any]) -> None:
        """Run the backend kernel on contiguous compute-dtype ``x`` into ``out``."""

    # --- shared machinery -----------------------------------------------------------------
    def to(self, device: str) -> PreparedLayer:
        """This layer on another device (parameters are re-cast lazily there)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.device = resolve_device(device)
        clone._backend = backend_for(clone.device)
        clone._cast = {}
        return clone

    def _params_for(self, dtype: np.dtype, shape: tuple[int, ...]) -> dict[str, Any]:
        """Kernel parameters in ``dtype`` on this layer's device, cast once and cached."""
        key = (dtype, self._shape_key(shape))
        cached = self._cast.get(key)
        if cached is None:
            cached = {name: self._backend.to_device(_as_kernel_array(value, dtype))
                      for name, value in self._kernel_params(shape).items()}
            if len(self._cast) >= _MAX_CAST_ENTRIES:  # free-channel layers: stay bounded
                self._cast.clear()
            self._cast[key] = cached
        return cached

    def _shape_key(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The part of an input shape the kernel parameters depend on (none, by default)."""
        return ()

    def _kernel_params(self, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """The parameter arrays the kernel reads, ones/zeros standing in for absent ones."""
        return {k: v for k, v in self.params.items() if v is not None}

    def work(self, shape: tuple[int, ...]) -> int:
        """About how many operations a forward pass on ``shape`` costs (for scheduling)."""
        return math.prod(shape)

    def apply(self, x: Any, out: Any = None) -> Any:
        """The forward pass on ``x`` (batch axis first), into ``out`` when given."""
        return self._backend.apply(self, x, out)

    def __call__(self, x: Any, out: Any = None) -> Any:
        return self.apply(x, out)

    def warmup(self, dtype_list: Sequence[np.dtype] = dtypes.SUPPORTED) -> None:
        """Compile (or load from Numba's cache) the kernels for these dtypes: a small batch
        for the serial variants and one past ``parallel_min_work()`` for the threaded ones, so
        that no request pays for a compilation."""
        shape = tuple(1 if s == -1 else s for s in self.example_shape())
        big = -(-parallel_min_work() // max(1, self.work((1, *shape)))) + 1
        for rows in (2, big):
            for dt in dtype_list:
                self.apply(np.zeros((rows, *shape), dtype=dt))

    def example_shape(self) -> tuple[int, ...]:
        """A per-sample shape this layer accepts (used for warm-up and export checks)."""
        if self.sample_shape is None:
            raise ValueError(f"{self.kind} needs an input_shape to build an example input")
        return self.sample_shape

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.hyper}

    def __repr__(self) -> str:
        hyper = ", ".join(f"{k}={v!r}" for k, v in self.hyper.items())
        return f"{type(self).__name__}({hyper}, device={self.device!r})"


def _channels_of(shape: tuple[int, ...], kind: str) -> int:
    if len(shape) < 2:
        raise ValueError(f"x must have a batch and a channel axis for {kind}, got shape {shape}")
    return shape[1]


class _AffineNorm(PreparedLayer):
    """A norm with optional elementwise ``weight`` and ``bias``, kept as given when FP32/FP64
    (``_array``'s ``exact``): the kernels only cast them."""

    _weight: np.ndarray | None
    _bias: np.ndarray | None

    def _set_affine(self, weight: Any, bias: Any, shape: tuple[int, ...] | None) -> None:
        self._weight = _optional(weight, "weight", shape, exact=True)
        self._bias = _optional(bias, "bias", shape, exact=True)

    @property
    def weight(self) -> np.ndarray | None:
        return _f64(self._weight)

    @property
    def bias(self) -> np.ndarray | None:
        return _f64(self._bias)


class _RowNorm(_AffineNorm):
    """Layer norm and RMSNorm: statistics over the trailing ``normalized_shape`` of each sample."""

    center: ClassVar[bool]

    def __init__(self, normalized_shape, weight, bias, eps, device) -> None:
        super().__init__(device)
        self.normalized_shape = _shape(normalized_shape, "normalized_shape")
        self.eps = eps
        self._set_affine(weight, bias, self.normalized_shape)
        self.sample_shape = self.normalized_shape

    def output_shape(self, shape):
        k = len(self.normalized_shape)
        if len(shape) < k + 1 or tuple(shape[-k:]) != self.normalized_shape:
            raise ValueError(
                f"x's trailing dimensions must be normalized_shape {list(self.normalized_shape)} "
                f"after a batch axis, got shape {list(shape)}"
            )
        return tuple(shape)

    def _kernel_params(self, shape):
        n = math.prod(self.normalized_shape)
        w, b = self._weight, self._bias
        return {"weight": _filled(n, 1.0) if w is None else w if w.ndim == 1 else w.reshape(n),
                "bias": _filled(n, 0.0) if b is None else b if b.ndim == 1 else b.reshape(n)}

    def _run(self, be, x, out, p):
        if x.ndim != 2:  # a reshape costs ~10 us with cold caches: only when needed
            n = math.prod(self.normalized_shape)
            x, out = x.reshape(-1, n), out.reshape(-1, n)
        be.row_norm(x, out, p["weight"], p["bias"], self.eps_for(x.dtype), self.center)

    def eps_for(self, dtype: np.dtype) -> float:
        return self.eps


class LayerNorm(_RowNorm):
    kind = "layer_norm"
    center = True

    def __init__(self, normalized_shape, weight=None, bias=None, eps=1e-5, device="cpu"):
        super().__init__(normalized_shape, weight, bias, _positive_float(eps, "eps"), device)

    @classmethod
    def from_state_dict(cls, params: Params, normalized_shape=None, eps=1e-5, device="cpu"):
        _reject_unknown(params, {"weight", "bias"}, cls.kind)
        if normalized_shape is None:
            if params.get("weight") is None:
                raise ValueError("normalized_shape is required when there is no weight")
            normalized_shape = np.shape(params["weight"])
        return cls(normalized_shape, params.get("weight"), params.get("bias"), eps, device)

    @property
    def hyper(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps}

    @property
    def params(self):
        return {"weight": self.weight, "bias": self.bias}


class RMSNorm(_RowNorm):
    kind = "rms_norm"
    center = False

    def __init__(self, normalized_shape, weight=None, eps=None, device="cpu"):
        eps = None if eps is None else _positive_float(eps, "eps")
        super().__init__(normalized_shape, weight, None, eps, device)

    @classmethod
    def from_state_dict(cls, params: Params, normalized_shape=None, eps=None, device="cpu"):
        _reject_unknown(params, {"weight"}, cls.kind)
        if normalized_shape is None:
            if params.get("weight") is None:
                raise ValueError("normalized_shape is required when there is no weight")
            normalized_shape = np.shape(params["weight"])
        return cls(normalized_shape, params.get("weight"), eps, device)

    def eps_for(self, dtype):
        """torch's default: the machine epsilon of the accumulation dtype."""
        if self.eps is not None:
            return self.eps
        return _MACHINE_EPS[dtypes.compute_dtype(np.dtype(dtype))]

    @property
    def hyper(self):
        return {"normalized_shape": list(self.normalized_shape), "eps": self.eps}

    @property
    def params(self):
        return {"weight": self.weight}


class BatchNorm(PreparedLayer):
    """Eval-mode batch norm, folded at load to ``y = x * scale + shift`` per channel."""

    kind = "batch_norm"

    def __init__(self, running_mean, running_var, weight=None, bias=None, eps=1e-5,
                 device="cpu"):
        super().__init__(device)
        self.eps = _positive_float(eps, "eps")
        mean = _array(running_mean, "running_mean", ndim=1)
        var = _array(running_var, "running_var", ndim=1)
        if var.shape != mean.shape:
            raise ValueError(f"running_var has shape {list(var.shape)}, running_mean "
                             f"{list(mean.shape)}: they must match")
        if np.any(var < 0):
            raise ValueError("running_var must be non-negative")
        w = _optional(weight, "weight", mean.shape)
        b = _optional(bias, "bias", mean.shape)
        self.num_features = mean.shape[0]
        self.scale = (1.0 if w is None else w) / np.sqrt(var + self.eps)
        self.shift = (0.0 if b is None else b) - mean * self.scale

    @classmethod
    def from_state_dict(cls, params: Params, eps=1e-5, num_features=None, device="cpu"):
        _reject_unknown(params, {"running_mean", "running_var", "weight", "bias"}, cls.kind)
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
        if _channels_of(shape, self.kind) != self.num_features:
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


class GroupNorm(_AffineNorm):
    """Group norm; instance norm is the case of one channel per group."""

    kind = "group_norm"

    def __init__(self, num_groups, weight=None, bias=None, eps=1e-5, num_channels=None,
                 device="cpu"):
        super().__init__(device)
        self.num_groups = _positive_int(num_groups, "num_groups")
        self.eps = _positive_float(eps, "eps")
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
        self.num_channels = None if num_channels is None else _positive_int(
            num_channels, "num_channels")
        if self.num_channels is not None and self.num_channels % self.num_groups:
            raise ValueError(f"num_groups ({self.num_groups}) must divide the number of "
                             f"channels ({self.num_channels})")
        shape = None if self.num_channels is None else (self.num_channels,)
        self._set_affine(weight, bias, shape)

    @classmethod
    def from_state_dict(cls, params: Params, num_groups=None, eps=1e-5, num_channels=None,
                        device="cpu"):
        _reject_unknown(params, {"weight", "bias"}, cls.kind)
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
        c = _channels_of(shape, self.kind)
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
        return {"weight": _filled(c, 1.0) if self._weight is None else self._weight,
                "bias": _filled(c, 0.0) if self._bias is None else self._bias}

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
        _reject_unknown(params, {"weight", "bias"}, cls.kind)
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


class _Linear(PreparedLayer):
    """``y = x @ weight.T + bias`` with a weight normalised once at load."""

    def _set_weight(self, weight: np.ndarray, bias: Any) -> None:
        self.weight = weight
        self.out_features, self.in_features = weight.shape
        self.bias = _optional(bias, "bias", (self.out_features,))
        self.sample_shape = (self.in_features,)

    @property
    def params(self):
        return {"weight": self.weight, "bias": self.bias}

    def output_shape(self, shape):
        if len(shape) < 2 or shape[-1] != self.in_features:
            raise ValueError(f"x must be (batch, ..., {self.in_features}), got shape "
                             f"{list(shape)}")
        return (*shape[:-1], self.out_features)

    def work(self, shape):
        return math.prod(shape) * self.out_features  # multiply-adds

    def _kernel_params(self, shape):
        bias = np.zeros(self.out_features) if self.bias is None else self.bias
        # Each backend reads the weight in its own layout: (in, out) unless it says otherwise.
        layout = getattr(self._backend, "linear_weight", _transposed)
        return {"weight": np.ascontiguousarray(layout(self.weight)), "bias": bias}

    def _run(self, be, x, out, p):
        be.linear(x.reshape(-1, self.in_features), p["weight"], p["bias"],
                  out.reshape(-1, self.out_features))


def _transposed(weight: np.ndarray) -> np.ndarray:
    return weight.T


def weight_norm_weight(weight_v: Any, weight_g: Any, dim: int = 0) -> np.ndarray:
    """``w = g * v / ||v||``, the norm over every axis but ``dim`` (torch's weight_norm)."""
    v = _array(weight_v, "weight_v", ndim=2)
    g = _array(weight_g, "weight_g")
    if dim not in (0, 1, -1, -2):
        raise ValueError(f"dim must be 0 or 1 for a linear weight, got {dim}")
    dim %= 2
    expected = (v.shape[0], 1) if dim == 0 else (1, v.shape[1])
    if g.size != expected[0] * expected[1]:
        raise ValueError(f"weight_g must have shape {list(expected)}, got {list(g.shape)}")
    norm = np.sqrt((v * v).sum(axis=1 - dim, keepdims=True))
    if np.any(norm == 0):
        raise ValueError("weight_v has an all-zero slice: its norm is 0")
    return g.reshape(expected) * v / norm


class WeightNormLinear(_Linear):
    kind = "weight_norm"

    def __init__(self, weight_v, weight_g, bias=None, dim=0, device="cpu"):
        super().__init__(device)
        self.dim = dim
        self._set_weight(weight_norm_weight(weight_v, weight_g, dim), bias)

    @classmethod
    def from_state_dict(cls, params: Params, dim=0, device="cpu"):
        names = {"weight_v": "parametrizations.weight.original1",
                 "weight_g": "parametrizations.weight.original0"}
        resolved = _resolve_names(params, names, cls.kind)
        _reject_unknown(params, {"bias", *names, *names.values()}, cls.kind)
        return cls(resolved["weight_v"], resolved["weight_g"], params.get("bias"), dim, device)

    @property
    def hyper(self):
        return {"dim": self.dim, "in_features": self.in_features,
                "out_features": self.out_features}


def spectral_sigma(weight_orig: Any, weight_u: Any = None, weight_v: Any = None) -> float:
    """sigma(W): ``u . (W v)`` from stored vectors (torch eval mode), else the exact 2-norm."""
    w = _array(weight_orig, "weight_orig", ndim=2)
    if (weight_u is None) != (weight_v is None):
        raise ValueError("weight_u and weight_v must be given together")
    if weight_u is not None:
        u = _array(weight_u, "weight_u", ndim=1)
        v = _array(weight_v, "weight_v", ndim=1)
        for name, vec, n in (("weight_u", u, w.shape[0]), ("weight_v", v, w.shape[1])):
            if vec.shape != (n,):
                raise ValueError(f"{name} must have shape [{n}] (weight_orig is "
                                 f"{list(w.shape)}), got {list(vec.shape)}")
        sigma = float(u @ (w @ v))
    else:
        sigma = float(np.linalg.norm(w, 2))
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma(W) must be positive, got {sigma}")
    return sigma


class SpectralNormLinear(_Linear):
    kind = "spectral_norm"

    def __init__(self, weight_orig, bias=None, weight_u=None, weight_v=None, device="cpu"):
        super().__init__(device)
        self.sigma = spectral_sigma(weight_orig, weight_u, weight_v)
        self._set_weight(_array(weight_orig, "weight_orig", ndim=2) / self.sigma, bias)

    @classmethod
    def from_state_dict(cls, params: Params, device="cpu"):
        names = {"weight_orig": "parametrizations.weight.original",
                 "weight_u": "parametrizations.weight.0._u",
                 "weight_v": "parametrizations.weight.0._v"}
        resolved = _resolve_names(params, names, cls.kind, optional={"weight_u", "weight_v"})
        _reject_unknown(params, {"bias", *names, *names.values()}, cls.kind)
        return cls(resolved["weight_orig"], params.get("bias"), resolved.get("weight_u"),
                   resolved.get("weight_v"), device)

    @property
    def hyper(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "sigma": self.sigma}


def _resolve_names(params: Params, names: dict[str, str], kind: str,
                   optional: set[str] = frozenset()) -> dict[str, Any]:
    """Accept torch's classic names and its newer parametrization names (not both)."""
    out: dict[str, Any] = {}
    for classic, modern in names.items():
        if params.get(classic) is not None and params.get(modern) is not None:
            raise ValueError(f"give {classic} or {modern}, not both")
        value = params.get(classic, params.get(modern))
        if value is None and classic not in optional:
            raise ValueError(f"{kind} needs the parameter {classic} (or {modern})")
        if value is not None:
            out[classic] = value
    return out


KINDS: dict[str, type[PreparedLayer]] = {
    cls.kind: cls
    for cls in (BatchNorm, LayerNorm, RMSNorm, InstanceNorm, GroupNorm, WeightNormLinear,
                SpectralNormLinear)
}


def prepare(kind: str, params: Params | None = None, device: str = "cpu",
            **hyper: Any) -> PreparedLayer:
    """Build the prepared layer of ``kind`` from a state dict and hyper-parameters.

    The layer owns its parameters: arrays are copied, so changing the caller's arrays later
    changes nothing (the one-shot functions, whose layer lives for one call, borrow them).
    """
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    if params is not None and not isinstance(params, Mapping):
        raise TypeError("params must be a mapping of parameter names to arrays")
    owned = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in (params or {}).items()}
    try:
        return cls.from_state_dict(owned, device=device, **hyper)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            bad = str(exc).rsplit(" ", 1)[-1]
            raise ValueError(f"{kind} takes no hyper-parameter {bad}") from None
        raise
