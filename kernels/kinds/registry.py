"""The kind registry: each kind declares once, beside its layer, what the rest of normserve needs.

The functional API, the float64 oracle, the benchmarks, the exporter's output shapes and the
test helpers all read these declarations, so a new kind is one declaration in its family's
module (plus its kernel, its reference function and its ONNX builder).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .base import PreparedLayer

Params = Mapping[str, Any]
Hyper = Mapping[str, Any]
#: A float64 forward pass from (x, parameters, hyper-parameters): a ``kernels.reference`` call.
#: For a kind of several inputs (``PreparedLayer.input_names``), ``x`` is the tuple of its
#: inputs and the rule returns the tuple of its outputs; so do the peers below.
Rule = Callable[[Any, Params, Hyper], Any]


@dataclass(frozen=True)
class Sizes:
    """The extents an example layer is built from; each kind reads the ones it has."""

    batch: int = 4
    features: int | tuple[int, ...] = 16  # the row norms' normalized_shape
    channels: int = 6
    groups: int = 3
    spatial: tuple[int, ...] = (5,)
    in_features: int = 16
    out_features: int = 5


#: What example parameters are drawn with: only its ``uniform`` is called, so the legacy
#: ``RandomState`` (whose stream NumPy keeps fixed) serves as well as a ``Generator``.
Rng = np.random.Generator | np.random.RandomState


@dataclass
class Example:
    """A layer of a kind as a user holds it: a state dict, hyper-parameters, the per-sample
    shape of an example input, and the per-sample dims config.json's ``input_shape`` would
    give (``-1`` where the kind leaves a dimension free).

    Examples are the same bits on every machine: uniform draws and correctly rounded
    arithmetic only (no BLAS, LAPACK or libm), so the demo repository can be built from them.
    """

    params: dict[str, np.ndarray]
    hyper: dict[str, Any]
    sample: tuple[int, ...]
    input_shape: tuple[int, ...]

    def shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *self.sample)


@dataclass(frozen=True)
class OnnxNode:
    """One ONNX operator computing a kind: ONNX Runtime's entry in the CPU benchmark (the
    exporter builds its own graphs). ``inputs`` follow the data inputs, in order;
    ``outputs`` name the node's outputs ("" for one left unused), ``domain`` its operator set
    (ONNX Runtime's fused contrib operators are ``com.microsoft``)."""

    op: str
    inputs: dict[str, np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    opset: int = 21
    domain: str = ""
    outputs: tuple[str, ...] = ("output",)


@dataclass(frozen=True)
class Benchmarks:
    """The shapes each benchmark times a kind at (empty: the kind is not benchmarked there).

    ``gemm``: a matrix product, reported in GFLOP/s too (2 flops per ``layer.work`` unit).
    """

    cpu: tuple[Sizes, ...] = ()
    cuda: Sizes | None = None
    cuda_quick: Sizes | None = None
    gemm: bool = False


@dataclass(frozen=True)
class Kind:
    """Everything normserve knows about one kind.

    ``example(rng, sizes, affine)`` builds deterministic example parameters (every optional
    one present when ``affine``). ``reference`` computes the kind in float64 from its state
    dict; ``folded_reference`` from its prepared (folded) ``params`` when those are not the
    state dict's. The peers time the same maths elsewhere: ``numpy_peer(layer, x)``,
    ``torch_peer(layer, x, params)`` with torch tensors (any device), ``onnx_peer(layer,
    params)``; each returns a zero-argument call (or the node to run).
    """

    layer: type[PreparedLayer]
    functional: Callable[..., Any]
    example: Callable[[Rng, Sizes, bool], Example]
    reference: Rule
    numpy_peer: Callable[[PreparedLayer, np.ndarray], Callable[[], Any]]
    torch_peer: Callable[[PreparedLayer, Any, dict[str, Any]], Callable[[], Any]]
    onnx_peer: Callable[[PreparedLayer, dict[str, np.ndarray]], OnnxNode]
    benchmarks: Benchmarks = Benchmarks()
    folded_reference: Rule | None = None

    @property
    def name(self) -> str:
        return self.layer.kind

    @property
    def param_names(self) -> frozenset[str]:
        return self.layer.param_names

    def prepared_reference(self) -> Rule:
        """The float64 rule that reads the prepared layer's ``params`` and ``hyper``."""
        return self.folded_reference or self.reference


_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a kind's declaration; a second declaration of the same name is a bug."""
    if kind.name in _KINDS:
        raise ValueError(f"kind {kind.name!r} is declared twice")
    _KINDS[kind.name] = kind
    return kind


def kinds() -> dict[str, Kind]:
    """Every declared kind by name, in declaration order."""
    return dict(_KINDS)


def get(name: str) -> Kind:
    """The declaration of ``name``, or a ValueError listing the kinds there are."""
    kind = _KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ValueError(f"kind must be one of {sorted(_KINDS)}, got {name!r}")
    return kind


def prepare(kind: str, params: Params | None = None, device: str = "cpu",
            **hyper: Any) -> PreparedLayer:
    """Build the prepared layer of ``kind`` from a state dict and hyper-parameters.

    The layer owns its parameters: arrays are copied, so changing the caller's arrays later
    changes nothing (the one-shot functions, whose layer lives for one call, borrow them).
    """
    cls = get(kind).layer
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
