"""Fused norms: a transformer block's residual add and the norm after it, as one op.

``add_rms_norm`` and ``add_layer_norm`` read ``x`` and ``residual`` and write ``y`` and
``h = x + residual (+ skip_bias)``, the next block's residual (vLLM's ``fused_add_rms_norm``,
ONNX Runtime's ``SkipSimplifiedLayerNormalization`` / ``SkipLayerNormalization``). ``h`` is
the exact sum rounded once to the input dtype (``x + residual`` is one correctly rounded add,
what PyTorch gives; with ``skip_bias`` the three terms are summed in float64 first, so that
they too round once), and ``y`` is the unfused norm's kernel applied to that rounded ``h``:
the fused result is bitwise normserve's own add followed by the unfused norm, so fusing
never changes an answer. FP64 data sums in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .. import reference as R
from .base import PreparedLayer, f64, filled, optional_array, reject_unknown
from .registry import Benchmarks, Example, Kind, OnnxNode, Rng, Sizes, prepare, register
from .row_norms import LayerNorm, RMSNorm, _numpy_peer
from .row_norms import _example as _row_example

#: ONNX Runtime's fused operators live in its contrib domain.
CONTRIB = "com.microsoft"


class _AddNorm:
    """What both fused kinds add to their unfused norm (a mixin before it in the bases)."""

    input_names: ClassVar[tuple[str, ...]] = ("input", "residual")
    output_names: ClassVar[tuple[str, ...]] = ("output", "residual_out")
    #: The kind of the norm applied to ``h``.
    unfused: ClassVar[str]
    _skip: np.ndarray | None = None

    @property
    def skip_bias(self) -> np.ndarray | None:
        """The per-feature bias added to ``h`` (add_layer_norm's; None: none)."""
        return f64(self._skip)

    def apply(self, x: Any, residual: Any, out: Any = None, residual_out: Any = None
              ) -> tuple[Any, Any]:
        """``(y, h)``; ``out``/``residual_out`` may be ``x``/``residual`` (in place)."""
        return self._backend.apply_add(self, x, residual, out, residual_out)

    def apply_all(self, inputs: Sequence[Any], outs: Sequence[Any] | None = None
                  ) -> tuple[Any, ...]:
        out, residual_out = (None, None) if outs is None else outs
        return self.apply(inputs[0], inputs[1], out, residual_out)

    def __call__(self, x: Any, residual: Any, out: Any = None, residual_out: Any = None):
        return self.apply(x, residual, out, residual_out)

    def unfused_layer(self) -> PreparedLayer:
        """The unfused norm with this layer's parameters: what ``y`` is of ``h``."""
        params = {k: v for k, v in self.params.items() if k != "skip_bias" and v is not None}
        return prepare(self.unfused, params, device=self.device, **self.hyper)

    def add_on_host(self, x: np.ndarray, residual: np.ndarray, h: np.ndarray) -> None:
        """``h = x + residual (+ skip_bias)`` summed in float64 and rounded once to ``h``'s
        dtype, in NumPy: for the dtypes a backend cannot round to in its kernel."""
        acc = x.astype(np.float64)
        acc += residual
        if self._skip is not None:
            acc += self._skip
        np.copyto(h, acc, casting="unsafe")

    def _cast_params(self, dtype, shape):
        """The skip bias stays float64: the kernels add it to the float64 sum."""
        n = math.prod(self.normalized_shape)
        skip = filled(n, 0.0) if self._skip is None else self._skip.reshape(n)
        return {**super()._cast_params(dtype, shape),
                "skip_bias": np.ascontiguousarray(skip, dtype=np.float64)}

    def _run_add(self, be, x, residual, h, out, p) -> None:
        """The backend's fused kernel on contiguous compute-dtype arrays."""
        if x.ndim != 2:
            n = math.prod(self.normalized_shape)
            x, residual, h, out = (a.reshape(-1, n) for a in (x, residual, h, out))
        be.add_row_norm(x, residual, p["skip_bias"], h, out, p["weight"], p["bias"],
                        self.eps_for(p["weight"].dtype), self.center, self._skip is not None)


class AddRMSNorm(_AddNorm, RMSNorm):
    kind = "add_rms_norm"
    unfused = "rms_norm"


class AddLayerNorm(_AddNorm, LayerNorm):
    """Layer norm of ``x + residual + skip_bias`` (ONNX Runtime's SkipLayerNormalization
    ``bias``, added before the norm)."""

    kind = "add_layer_norm"
    unfused = "layer_norm"
    param_names = frozenset({"weight", "bias", "skip_bias"})

    def __init__(self, normalized_shape, weight=None, bias=None, skip_bias=None, eps=1e-5,
                 device="cpu"):
        super().__init__(normalized_shape, weight, bias, eps, device)
        self._skip = optional_array(skip_bias, "skip_bias", self.normalized_shape, exact=True)

    @classmethod
    def from_state_dict(cls, params, normalized_shape=None, eps=1e-5, device="cpu"):
        reject_unknown(params, cls.param_names, cls.kind)
        if normalized_shape is None:
            if params.get("weight") is None:
                raise ValueError("normalized_shape is required when there is no weight")
            normalized_shape = np.shape(params["weight"])
        return cls(normalized_shape, params.get("weight"), params.get("bias"),
                   params.get("skip_bias"), eps, device)

    @property
    def params(self):
        return {**super().params, "skip_bias": self.skip_bias}


def add_rms_norm(x, residual, normalized_shape, weight=None, eps=None, offset=0.0, *,
                 device="cpu", out=None, residual_out=None):
    """``(rms_norm(h), h)`` with ``h = x + residual`` rounded once to the input dtype."""
    return AddRMSNorm(normalized_shape, weight, eps, offset, device).apply(
        x, residual, out, residual_out)


def add_layer_norm(x, residual, normalized_shape, weight=None, bias=None, skip_bias=None,
                   eps=1e-5, *, device="cpu", out=None, residual_out=None):
    """``(layer_norm(h), h)`` with ``h = x + residual + skip_bias`` rounded once."""
    return AddLayerNorm(normalized_shape, weight, bias, skip_bias, eps, device).apply(
        x, residual, out, residual_out)


def _example(center: bool):
    """The row norm's example; add_layer_norm's draws a skip bias after its weight and bias."""
    row_example = _row_example(center)

    def example(rng: Rng, sizes: Sizes, affine: bool = True) -> Example:
        ex = row_example(rng, sizes, affine)
        if affine and center:
            ex.params["skip_bias"] = rng.uniform(-0.5, 0.5, math.prod(ex.sample)).reshape(
                ex.sample)
        return ex

    return example


def numpy_sum(layer: _AddNorm, x: np.ndarray, residual: np.ndarray, h: np.ndarray):
    """A call writing ``h`` as a NumPy user adds: ``x + residual (+ skip_bias)``, each add
    rounded in ``x``'s dtype (the benchmarks' unfused peers)."""
    skip = layer.skip_bias
    skip = None if skip is None else skip.astype(x.dtype)

    def run() -> np.ndarray:
        np.add(x, residual, out=h)
        if skip is not None:
            np.add(h, skip, out=h)
        return h

    return run


def _numpy_add_peer(layer: _AddNorm, xs):
    """NumPy's add into a kept buffer, then the vectorised FP32 NumPy norm of it."""
    h = np.empty_like(xs[0])
    add, norm = numpy_sum(layer, *xs, h), _numpy_peer(layer, h)

    def run():
        add()
        return norm(), h

    return run


def _torch_add_peer(layer: _AddNorm, xs, params):
    """As a user writes it: ``h = x + residual`` then ``F.rms_norm`` / ``F.layer_norm``
    (Gemma's ``offset + weight.float()`` by hand)."""
    import torch.nn.functional as F

    x, residual = xs
    shape = layer.normalized_shape
    skip = params.get("skip_bias")
    if layer.center:
        w, b = params.get("weight"), params.get("bias")

        def run():
            h = x + residual if skip is None else x + residual + skip
            return F.layer_norm(h, shape, w, b, layer.eps), h
        return run
    w = params.get("weight")
    if layer.offset:
        w = layer.offset + (1.0 if w is None else w.float())
        w = w.expand(shape) if w.dim() == 0 else w

    def run():
        h = x + residual
        return F.rms_norm(h, shape, w, layer.eps), h
    return run


def _onnx_add_peer(layer: _AddNorm, params):
    """ONNX Runtime's fused contrib operator as one node; its fourth output is ``h``."""
    n = math.prod(layer.normalized_shape)
    attrs = {"epsilon": layer.eps_for(np.float32)}  # the operator's default is 1e-12
    outputs = ("output", "", "", "residual_out")
    if not layer.center:
        w = layer.effective_weight()
        return OnnxNode("SkipSimplifiedLayerNormalization",
                        {"weight": np.ones(n) if w is None else w.reshape(n)}, attrs, 17,
                        CONTRIB, outputs)
    inputs = {"weight": np.ones(n) if layer.weight is None else layer.weight.reshape(n),
              "bias": np.zeros(n) if layer.bias is None else layer.bias.reshape(n)}
    if layer.skip_bias is not None:
        inputs["skip_bias"] = layer.skip_bias.reshape(n)
    return OnnxNode("SkipLayerNormalization", inputs, attrs, 17, CONTRIB, outputs)


_BENCH = Benchmarks(
    cpu=tuple(Sizes(batch=rows, features=n) for rows, n in ((256, 4096), (8192, 1024))),
    cuda=Sizes(batch=8192, features=4096), cuda_quick=Sizes(batch=1024, features=4096))

register(Kind(
    layer=AddRMSNorm, functional=add_rms_norm, example=_example(center=False),
    reference=lambda xs, p, h: R.add_rms_norm(xs[0], xs[1], h["normalized_shape"],
                                              p.get("weight"), h.get("eps"),
                                              h.get("offset", 0.0)),
    numpy_peer=_numpy_add_peer, torch_peer=_torch_add_peer, onnx_peer=_onnx_add_peer,
    benchmarks=_BENCH))

register(Kind(
    layer=AddLayerNorm, functional=add_layer_norm, example=_example(center=True),
    reference=lambda xs, p, h: R.add_layer_norm(xs[0], xs[1], h["normalized_shape"],
                                                p.get("weight"), p.get("bias"),
                                                p.get("skip_bias"), h.get("eps", 1e-5)),
    numpy_peer=_numpy_add_peer, torch_peer=_torch_add_peer, onnx_peer=_onnx_add_peer,
    benchmarks=_BENCH))
