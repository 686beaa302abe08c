"""What every prepared layer shares: the base class and the parameter checks.

A prepared layer validates its parameters once, folds or precomputes what eval mode allows
(batch norm's scale and shift, weight norm's ``w``, spectral norm's ``sigma``), keeps them as
float64 masters (``params``), casts them once per compute dtype and device, and applies itself
to inputs of any supported dtype. The arithmetic lives in the backends (``kernels.cpu`` and,
when installed, ``kernels.cuda``); each kind's class lives in its family's module.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from .. import dtypes
from ..checks import all_finite
from ..cpu_jit import parallel_min_work
from ..devices import backend_for, resolve_device

Params = Mapping[str, Any]
_MAX_CAST_ENTRIES = 32
#: Machine epsilon per accumulation dtype: torch's default RMSNorm eps.
MACHINE_EPS = {dt: float(np.finfo(dt).eps) for dt in set(dtypes.COMPUTE.values())}


def as_array(value: Any, name: str, ndim: int | None = None, exact: bool = False) -> np.ndarray:
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


def f64(arr: np.ndarray | None) -> np.ndarray | None:
    """A parameter kept exact (see ``as_array``) as the float64 master ``params`` promises."""
    return None if arr is None else np.asarray(arr, dtype=np.float64)


def _as_kernel_array(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``value`` as a C-contiguous ``dtype`` array; itself when it is one already (NumPy's
    own check costs ~10 us with cold caches, these attribute reads less)."""
    if value.dtype is dtype and value.flags.c_contiguous:
        return value
    return np.ascontiguousarray(value, dtype=dtype)


@cache
def filled(n: int, value: float) -> np.ndarray:
    """A read-only FP32 vector standing in for an absent weight (1) or bias (0): exact in
    every compute dtype, so FP32 kernels take it without a cast, and built once per size."""
    arr = np.full(n, value, np.float32)
    arr.flags.writeable = False
    return arr


def optional_array(value: Any, name: str, shape: tuple[int, ...] | None,
              exact: bool = False) -> np.ndarray | None:
    """An optional parameter (None stays None) checked by ``as_array`` and, when given, its
    shape."""
    if value is None:
        return None
    arr = as_array(value, name, exact=exact)
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(arr.shape)}")
    return arr


def positive_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive finite number, got {value}")
    return value


def finite_float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def as_shape(value: Any, name: str) -> tuple[int, ...]:
    if type(value) in (list, tuple) and value and all(type(v) is int and v > 0 for v in value):
        return tuple(value)  # the common case, without the generic checks below
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (Sequence, np.ndarray)) or isinstance(value, str) or not len(value):
        raise TypeError(f"{name} must be a non-empty list of positive integers, got {value!r}")
    return tuple(positive_int(v, f"{name}[{i}]") for i, v in enumerate(value))


def reject_unknown(params: Params, known: frozenset[str], kind: str) -> None:
    unknown = sorted(set(params) - known - {"num_batches_tracked"})
    if unknown:
        raise ValueError(
            f"unknown parameter(s) for {kind}: {', '.join(unknown)}; expected {sorted(known)}"
        )


class PreparedLayer(ABC):
    """A normalisation layer ready to run: parameters checked, folded and cached per dtype."""

    kind: ClassVar[str]
    #: The state-dict names ``from_state_dict`` accepts: torch's, parametrization aliases too.
    param_names: ClassVar[frozenset[str]]
    #: The per-sample shape a layer fixes (``-1`` for a free dimension), or None.
    sample_shape: tuple[int, ...] | None = None
    #: The tensors a forward pass reads and writes, in order, as a served model names them.
    #: Every output has the per-sample shape ``sample_output_shape`` gives.
    input_names: ClassVar[tuple[str, ...]] = ("input",)
    output_names: ClassVar[tuple[str, ...]] = ("output",)

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

    def sample_output_shape(self, dims: Sequence[int]) -> tuple[int, ...]:
        """Per-sample output dims for per-sample input dims (``-1`` free): the same dims, for
        every kind that keeps its input's shape."""
        return tuple(dims)

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
            cached = {name: self._backend.to_device(value)
                      for name, value in self._cast_params(dtype, shape).items()}
            if len(self._cast) >= _MAX_CAST_ENTRIES:  # free-channel layers: stay bounded
                self._cast.clear()
            self._cast[key] = cached
        return cached

    def _cast_params(self, dtype: np.dtype, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
        """The kernel parameters as C-contiguous ``dtype`` arrays on the host (a layer whose
        folding must round in the compute dtype, as RMSNorm's offset does, overrides it)."""
        return {name: _as_kernel_array(value, dtype)
                for name, value in self._kernel_params(shape).items()}

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

    def apply_all(self, inputs: Sequence[Any], outs: Sequence[Any] | None = None
                  ) -> tuple[Any, ...]:
        """The forward pass on ``input_names``' arrays, into ``outs`` (one per output name)
        when given: the one call a caller that serves every kind (the service) makes."""
        return (self.apply(inputs[0], None if outs is None else outs[0]),)

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
                self.apply_all([np.zeros((rows, *shape), dtype=dt) for _ in self.input_names])

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


def channels_of(shape: tuple[int, ...], kind: str) -> int:
    if len(shape) < 2:
        raise ValueError(f"x must have a batch and a channel axis for {kind}, got shape {shape}")
    return shape[1]


class AffineNorm(PreparedLayer):
    """A norm with optional elementwise ``weight`` and ``bias``, kept as given when FP32/FP64
    (``as_array``'s ``exact``): the kernels only cast them."""

    _weight: np.ndarray | None
    _bias: np.ndarray | None

    def _set_affine(self, weight: Any, bias: Any, shape: tuple[int, ...] | None) -> None:
        self._weight = optional_array(weight, "weight", shape, exact=True)
        self._bias = optional_array(bias, "bias", shape, exact=True)

    @property
    def weight(self) -> np.ndarray | None:
        return f64(self._weight)

    @property
    def bias(self) -> np.ndarray | None:
        return f64(self._bias)


def resolve_names(params: Params, names: dict[str, str], kind: str,
                  optional: frozenset[str] = frozenset()) -> dict[str, Any]:
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


def channel_layer(build: Callable[[], PreparedLayer], x: Any,
                  params: dict[str, Any]) -> PreparedLayer:
    """A per-channel layer for a one-shot call; when building it fails, the error names the
    parameter that disagrees with ``x``'s channels."""
    try:
        return build()
    except ValueError:
        _per_channel(x, params)
        raise
