"""Normalised linears: weight norm and spectral norm, a linear layer whose weight is
normalised once at load (``w = g * v / ||v||``, ``W / sigma(W)``)."""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any, ClassVar

import numpy as np
from numba import prange

from .. import reference as R
from ..cpu_jit import threaded_kernel
from .base import (
    Params,
    PreparedLayer,
    _as_kernel_array,
    as_array,
    optional_array,
    reject_unknown,
    resolve_names,
)
from .registry import Benchmarks, Example, Kind, OnnxNode, Rng, Sizes, register


class _Linear(PreparedLayer):
    """``y = x @ weight.T + bias`` with a weight normalised once at load.

    The weight is kept as its source matrix (FP32 or FP64, as given) times a float64 scale per
    output row (``g / ||v||``, ``1 / sigma``), and each backend builds its own layout from the
    two in one pass: the float64 ``weight`` is only formed when something asks for it (export,
    the peers), so a one-shot call on a 4096x4096 weight does not pay for 128 MB of it.
    """

    def _set_weight(self, source: np.ndarray, row_scale: np.ndarray, bias: Any) -> None:
        self._source, self._row_scale = source, row_scale
        self.out_features, self.in_features = source.shape
        self.bias = optional_array(bias, "bias", (self.out_features,))
        self.sample_shape = (self.in_features,)

    @cached_property
    def weight(self) -> np.ndarray:
        """The normalised weight in float64: each element ``source * scale`` rounded once,
        the same product the kernels' layouts round to their dtype."""
        return self._source * self._row_scale[:, None]

    @property
    def params(self):
        return {"weight": self.weight, "bias": self.bias}

    def sample_output_shape(self, dims):
        return (*dims[:-1], self.out_features)

    def output_shape(self, shape):
        if len(shape) < 2 or shape[-1] != self.in_features:
            raise ValueError(f"x must be (batch, ..., {self.in_features}), got shape "
                             f"{list(shape)}")
        return (*shape[:-1], self.out_features)

    def work(self, shape):
        return math.prod(shape) * self.out_features  # multiply-adds

    def _cast_params(self, dtype, shape):
        bias = np.zeros(self.out_features) if self.bias is None else self.bias
        # Each backend reads the weight in its own layout: (in, out) unless it packs its own.
        pack = getattr(self._backend, "linear_weight", None)
        if pack is None:
            weight = np.ascontiguousarray(self.weight.T, dtype=dtype)
        else:
            weight = pack(self._source, self._row_scale, dtype)
        return {"weight": weight, "bias": _as_kernel_array(bias, dtype)}

    def _run(self, be, x, out, p):
        be.linear(x.reshape(-1, self.in_features), p["weight"], p["bias"],
                  out.reshape(-1, self.out_features))


@threaded_kernel(nogil=True, cache=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _row_sum_squares(v, out):
    """``out[o] = sum(v[o] ** 2)`` in float64: the weight-norm denominators, one read of ``v``
    whatever its dtype (a NaN or Inf in a row makes its sum non-finite)."""
    for o in prange(v.shape[0]):
        row = v[o]
        ss = 0.0
        for k in range(row.shape[0]):
            e = np.float64(row[k])
            ss += e * e
        out[o] = ss


def _checked_norms(sum_squares: np.ndarray, v: np.ndarray) -> np.ndarray:
    if not np.isfinite(sum_squares).all() and not np.isfinite(v).all():
        raise ValueError("weight_v contains NaN or Inf")
    if np.any(sum_squares == 0):
        raise ValueError("weight_v has an all-zero slice: its norm is 0")
    return np.sqrt(sum_squares)


def weight_norm_scale(weight_v: Any, weight_g: Any, dim: int = 0
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``w = g * v / ||v||`` (the norm over every axis but ``dim``, as torch's weight_norm) as
    ``(source, row_scale)`` with ``w[o] = source[o] * row_scale[o]``: for ``dim=0`` the
    source is ``v`` itself (FP32/FP64 kept as given) and the scale ``g / ||v[o]||``."""
    if isinstance(weight_v, np.ndarray) and weight_v.dtype.char in "fd":
        v = weight_v  # checked for NaN/Inf by its norms, in the same read
        if v.ndim != 2:
            raise ValueError(f"weight_v must have 2 dimension(s), got shape {v.shape}")
    else:
        v = as_array(weight_v, "weight_v", ndim=2)
    g = as_array(weight_g, "weight_g")
    if dim not in (0, 1, -1, -2):
        raise ValueError(f"dim must be 0 or 1 for a linear weight, got {dim}")
    dim %= 2
    expected = (v.shape[0], 1) if dim == 0 else (1, v.shape[1])
    if g.size != expected[0] * expected[1]:
        raise ValueError(f"weight_g must have shape {list(expected)}, got {list(g.shape)}")
    if dim == 0:
        v = np.ascontiguousarray(v)
        sum_squares = np.empty(v.shape[0])
        _row_sum_squares(v, sum_squares)
        return v, g.reshape(-1) / _checked_norms(sum_squares, v)
    v = v.astype(np.float64)  # norms down the columns: rare, formed in NumPy
    norm = _checked_norms((v * v).sum(axis=0), v)
    return v * (g.reshape(-1) / norm), np.ones(v.shape[0])


class WeightNormLinear(_Linear):
    kind = "weight_norm"
    #: torch's classic name -> its parametrization name.
    aliases: ClassVar[dict[str, str]] = {"weight_v": "parametrizations.weight.original1",
                                         "weight_g": "parametrizations.weight.original0"}
    param_names = frozenset({"bias", *aliases, *aliases.values()})

    def __init__(self, weight_v, weight_g, bias=None, dim=0, device="cpu"):
        super().__init__(device)
        self.dim = dim
        self._set_weight(*weight_norm_scale(weight_v, weight_g, dim), bias)

    @classmethod
    def from_state_dict(cls, params: Params, dim=0, device="cpu"):
        resolved = resolve_names(params, cls.aliases, cls.kind)
        reject_unknown(params, cls.param_names, cls.kind)
        return cls(resolved["weight_v"], resolved["weight_g"], params.get("bias"), dim, device)

    @property
    def hyper(self):
        return {"dim": self.dim, "in_features": self.in_features,
                "out_features": self.out_features}


def spectral_sigma(weight_orig: Any, weight_u: Any = None, weight_v: Any = None) -> float:
    """sigma(W): ``u . (W v)`` from stored vectors (torch eval mode), else the exact 2-norm."""
    w = as_array(weight_orig, "weight_orig", ndim=2)
    if (weight_u is None) != (weight_v is None):
        raise ValueError("weight_u and weight_v must be given together")
    if weight_u is not None:
        u = as_array(weight_u, "weight_u", ndim=1)
        v = as_array(weight_v, "weight_v", ndim=1)
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
    #: torch's classic name -> its parametrization name.
    aliases: ClassVar[dict[str, str]] = {"weight_orig": "parametrizations.weight.original",
                                         "weight_u": "parametrizations.weight.0._u",
                                         "weight_v": "parametrizations.weight.0._v"}
    param_names = frozenset({"bias", *aliases, *aliases.values()})

    def __init__(self, weight_orig, bias=None, weight_u=None, weight_v=None, device="cpu"):
        super().__init__(device)
        w = as_array(weight_orig, "weight_orig", ndim=2, exact=True)
        self.sigma = spectral_sigma(w, weight_u, weight_v)
        self._set_weight(np.ascontiguousarray(w), np.full(w.shape[0], 1.0 / self.sigma), bias)

    @classmethod
    def from_state_dict(cls, params: Params, device="cpu"):
        resolved = resolve_names(params, cls.aliases, cls.kind,
                                 optional=frozenset({"weight_u", "weight_v"}))
        reject_unknown(params, cls.param_names, cls.kind)
        return cls(resolved["weight_orig"], params.get("bias"), resolved.get("weight_u"),
                   resolved.get("weight_v"), device)

    @property
    def hyper(self):
        return {"in_features": self.in_features, "out_features": self.out_features,
                "sigma": self.sigma}


def weight_norm_linear(x, weight_v, weight_g, bias=None, dim=0, *, device="cpu", out=None):
    return WeightNormLinear(weight_v, weight_g, bias, dim, device).apply(x, out)


def spectral_norm_linear(x, weight_orig, bias=None, weight_u=None, weight_v=None, *,
                         device="cpu", out=None):
    layer = SpectralNormLinear(weight_orig, bias, weight_u, weight_v, device)
    return layer.apply(x, out)


def _weight_norm_example(rng: Rng, sizes: Sizes, affine: bool = True) -> Example:
    n_out, n_in = sizes.out_features, sizes.in_features
    params = {"weight_v": rng.uniform(-1.0, 1.0, (n_out, n_in)),
              "weight_g": rng.uniform(0.5, 2.0, (n_out, 1))}
    if affine:
        params["bias"] = rng.uniform(-1.0, 1.0, n_out)
    return Example(params, {}, (n_in,), (n_in,))


def _spectral_norm_example(rng: Rng, sizes: Sizes, affine: bool = True) -> Example:
    """With ``affine``, torch's stored ``u``, ``v`` too: three power-iteration steps from a
    random ``v``, as training leaves them (so sigma = u . W v > 0)."""
    n_out, n_in = sizes.out_features, sizes.in_features
    w = rng.uniform(-1.0, 1.0, (n_out, n_in))
    params = {"weight_orig": w}
    if affine:
        params["bias"] = rng.uniform(-1.0, 1.0, n_out)
        wt = np.ascontiguousarray(w.T)
        v = _unit(rng.uniform(-1.0, 1.0, n_in))
        for _ in range(3):
            u = _unit(_matvec(w, v))
            v = _unit(_matvec(wt, u))
        params |= {"weight_u": u, "weight_v": v}
    return Example(params, {}, (n_in,), (n_in,))


def _matvec(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``w @ v`` with correctly rounded dot products (``math.fsum``), not BLAS: the same bits
    on every machine."""
    return np.array([math.fsum((row * v).tolist()) for row in w])


def _unit(a: np.ndarray) -> np.ndarray:
    return a / math.sqrt(math.fsum((a * a).tolist()))


def _numpy_peer(layer: _Linear, x: np.ndarray):
    """``x @ w.T + b`` in FP32 NumPy (its BLAS)."""
    wt = np.ascontiguousarray(layer.weight.T.astype(np.float32))
    bias = None if layer.bias is None else layer.bias.astype(np.float32)
    return (lambda: x @ wt) if bias is None else (lambda: x @ wt + bias)


def _torch_peer(layer: _Linear, x, params):
    import torch
    import torch.nn.functional as F

    w = torch.from_numpy(np.ascontiguousarray(layer.weight)).to(x.device, x.dtype)
    return lambda: F.linear(x, w, params.get("bias"))


def _onnx_peer(layer: _Linear, params):
    inputs = {"weight": layer.weight.astype(np.float32)}
    if layer.bias is not None:
        inputs["bias"] = layer.bias.astype(np.float32)
    return OnnxNode("Gemm", inputs, {"transB": 1})


def _folded(x, p, h):
    """The prepared ``params`` hold the normalised weight: a plain linear layer."""
    return R.linear(x, p["weight"], p["bias"])


_CUDA = Sizes(batch=4096, in_features=4096, out_features=4096)
_CUDA_QUICK = Sizes(batch=512, in_features=1024, out_features=1024)

register(Kind(
    layer=WeightNormLinear, functional=weight_norm_linear, example=_weight_norm_example,
    reference=lambda x, p, h: R.weight_norm_linear(x, p["weight_v"], p["weight_g"],
                                                   p.get("bias"), h.get("dim", 0)),
    folded_reference=_folded,
    numpy_peer=_numpy_peer, torch_peer=_torch_peer, onnx_peer=_onnx_peer,
    benchmarks=Benchmarks(cpu=(Sizes(batch=4096, in_features=1024, out_features=1024),
                               Sizes(batch=256, in_features=4096, out_features=4096)),
                          cuda=_CUDA, cuda_quick=_CUDA_QUICK, gemm=True)))

register(Kind(
    layer=SpectralNormLinear, functional=spectral_norm_linear,
    example=_spectral_norm_example,
    reference=lambda x, p, h: R.spectral_norm_linear(x, p["weight_orig"], p.get("bias"),
                                                     p.get("weight_u"), p.get("weight_v")),
    folded_reference=_folded,
    numpy_peer=_numpy_peer, torch_peer=_torch_peer, onnx_peer=_onnx_peer,
    # On the CPU its forward pass is weight norm's GEMM, timed there.
    benchmarks=Benchmarks(cuda=_CUDA, cuda_quick=_CUDA_QUICK, gemm=True)))
