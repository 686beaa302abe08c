"""Row norms: layer norm and RMSNorm, statistics over the trailing ``normalized_shape``."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .. import dtypes
from .. import reference as R
from .base import (
    MACHINE_EPS,
    AffineNorm,
    Params,
    as_shape,
    filled,
    finite_float,
    positive_float,
    reject_unknown,
)
from .registry import Benchmarks, Example, Kind, OnnxNode, Rng, Sizes, register


class _RowNorm(AffineNorm):
    """Layer norm and RMSNorm: statistics over the trailing ``normalized_shape`` of each sample."""

    center: ClassVar[bool]

    def __init__(self, normalized_shape, weight, bias, eps, device) -> None:
        super().__init__(device)
        self.normalized_shape = as_shape(normalized_shape, "normalized_shape")
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
        return {"weight": filled(n, 1.0) if w is None else w if w.ndim == 1 else w.reshape(n),
                "bias": filled(n, 0.0) if b is None else b if b.ndim == 1 else b.reshape(n)}

    def _run(self, be, x, out, p):
        if x.ndim != 2:  # a reshape costs ~10 us with cold caches: only when needed
            n = math.prod(self.normalized_shape)
            x, out = x.reshape(-1, n), out.reshape(-1, n)
        # The compute dtype is the parameters' (BF16 data reaches a CPU kernel as its bits).
        be.row_norm(x, out, p["weight"], p["bias"], self.eps_for(p["weight"].dtype),
                    self.center)

    def eps_for(self, dtype: np.dtype) -> float:
        return self.eps

    def effective_weight(self) -> np.ndarray | None:
        """The per-feature scale as float64 (None: ones), whatever folding it holds."""
        return self.weight


class LayerNorm(_RowNorm):
    kind = "layer_norm"
    param_names = frozenset({"weight", "bias"})
    center = True

    def __init__(self, normalized_shape, weight=None, bias=None, eps=1e-5, device="cpu"):
        super().__init__(normalized_shape, weight, bias, positive_float(eps, "eps"), device)

    @classmethod
    def from_state_dict(cls, params: Params, normalized_shape=None, eps=1e-5, device="cpu"):
        reject_unknown(params, cls.param_names, cls.kind)
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
    """RMSNorm; ``offset`` scales by ``offset + weight`` (Gemma's ``1 + weight`` is offset 1),
    the sum formed in the compute dtype from the widened weight, so the product with the
    normalised value rounds once, as transformers' ``GemmaRMSNorm`` computes it. No weight
    means ones: the scale is then ``offset + 1``."""

    kind = "rms_norm"
    param_names = frozenset({"weight"})
    center = False

    def __init__(self, normalized_shape, weight=None, eps=None, offset=0.0, device="cpu"):
        eps = None if eps is None else positive_float(eps, "eps")
        self.offset = finite_float(offset, "offset")
        super().__init__(normalized_shape, weight, None, eps, device)

    @classmethod
    def from_state_dict(cls, params: Params, normalized_shape=None, eps=None, offset=0.0,
                        device="cpu"):
        reject_unknown(params, cls.param_names, cls.kind)
        if normalized_shape is None:
            if params.get("weight") is None:
                raise ValueError("normalized_shape is required when there is no weight")
            normalized_shape = np.shape(params["weight"])
        return cls(normalized_shape, params.get("weight"), eps, offset, device)

    def eps_for(self, dtype):
        """torch's default: the machine epsilon of the accumulation dtype."""
        if self.eps is not None:
            return self.eps
        return MACHINE_EPS[dtypes.compute_dtype(np.dtype(dtype))]

    def _cast_params(self, dtype, shape):
        p = super()._cast_params(dtype, shape)
        if self.offset:
            p["weight"] = dtype.type(self.offset) + p["weight"]  # rounded once in ``dtype``
        return p

    def effective_weight(self) -> np.ndarray | None:
        """The per-feature scale the FP32 kernels multiply by, as float64 (None: ones): the
        offset folded in FP32, as an exported graph's scale initializer holds it."""
        if not self.offset:
            return self.weight
        w = np.ones(self.normalized_shape) if self._weight is None else self._weight
        return (np.float32(self.offset) + np.asarray(w, np.float32)).astype(np.float64)

    @property
    def hyper(self):
        hyper = {"normalized_shape": list(self.normalized_shape), "eps": self.eps}
        if self.offset:  # absent when 0, so configs written before offset existed round-trip
            hyper["offset"] = self.offset
        return hyper

    @property
    def params(self):
        return {"weight": self.weight}


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5, *, device="cpu",
               out=None):
    return LayerNorm(normalized_shape, weight, bias, eps, device).apply(x, out)


def rms_norm(x, normalized_shape, weight=None, eps=None, offset=0.0, *, device="cpu",
             out=None):
    return RMSNorm(normalized_shape, weight, eps, offset, device).apply(x, out)


def _example(center: bool):
    def example(rng: Rng, sizes: Sizes, affine: bool = True) -> Example:
        shape = (sizes.features,) if isinstance(sizes.features, int) else tuple(sizes.features)
        n = math.prod(shape)
        params = {"weight": rng.uniform(0.5, 1.5, n).reshape(shape)} if affine else {}
        if affine and center:
            params["bias"] = rng.uniform(-1.0, 1.0, n).reshape(shape)
        return Example(params, {"normalized_shape": list(shape)}, shape, shape)

    return example


def _numpy_peer(layer: _RowNorm, x: np.ndarray):
    """Vectorised FP32 NumPy, two-pass statistics."""
    n = math.prod(layer.normalized_shape)
    w, b = (None if v is None else v.astype(np.float32).reshape(n)
            for v in (layer.effective_weight(), layer.bias))
    eps = np.float32(layer.eps_for(x.dtype))
    rows = x.reshape(-1, n)

    def run():
        d = rows - rows.mean(axis=-1, keepdims=True) if layer.center else rows
        y = d / np.sqrt((d * d).mean(axis=-1, keepdims=True) + eps)
        y = y if w is None else y * w
        return (y if b is None else y + b).reshape(x.shape)

    return run


def _torch_layer_norm(layer: LayerNorm, x, params):
    import torch.nn.functional as F

    return lambda: F.layer_norm(x, layer.normalized_shape, params.get("weight"),
                                params.get("bias"), layer.eps)


def _torch_rms_norm(layer: RMSNorm, x, params):
    import torch.nn.functional as F

    w = params.get("weight")
    if layer.offset:  # transformers' GemmaRMSNorm: x_hat * (offset + weight.float())
        w = layer.offset + (1.0 if w is None else w.float())
        w = w.expand(layer.normalized_shape) if w.dim() == 0 else w
    return lambda: F.rms_norm(x, layer.normalized_shape, w, layer.eps)


def _onnx_layer_norm(layer: LayerNorm, params):
    return OnnxNode("LayerNormalization", {k: params[k] for k in ("weight", "bias")},
                    {"axis": -len(layer.normalized_shape), "epsilon": layer.eps})


def _onnx_rms_norm(layer: RMSNorm, params):
    return OnnxNode("RMSNormalization", {"weight": layer.effective_weight()},
                    {"axis": -len(layer.normalized_shape),
                     "epsilon": layer.eps_for(np.float32)}, opset=23)


_BENCH = Benchmarks(
    cpu=tuple(Sizes(batch=rows, features=n) for rows, n in ((8192, 1024), (256, 4096),
                                                            (1024, 4096), (65536, 128))),
    cuda=Sizes(batch=8192, features=4096), cuda_quick=Sizes(batch=1024, features=4096))

register(Kind(
    layer=LayerNorm, functional=layer_norm, example=_example(center=True),
    reference=lambda x, p, h: R.layer_norm(x, h["normalized_shape"], p.get("weight"),
                                           p.get("bias"), h.get("eps", 1e-5)),
    numpy_peer=_numpy_peer, torch_peer=_torch_layer_norm, onnx_peer=_onnx_layer_norm,
    benchmarks=_BENCH))

register(Kind(
    layer=RMSNorm, functional=rms_norm, example=_example(center=False),
    reference=lambda x, p, h: R.rms_norm(x, h["normalized_shape"], p.get("weight"),
                                         h.get("eps"), h.get("offset", 0.0)),
    numpy_peer=_numpy_peer, torch_peer=_torch_rms_norm, onnx_peer=_onnx_rms_norm,
    benchmarks=_BENCH))
