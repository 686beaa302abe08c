"""Argument checks shared by every backend, so errors read the same on CPU and GPU."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .cpu_jit import jit
from .dtypes import check_dtype


@jit(nogil=True, cache=True)
def _finite_vector(a):
    # A loop, which Numba compiles (it has no all() over a generator).
    for v in a:  # noqa: SIM110
        if not math.isfinite(v):
            return False
    return True


def all_finite(a: np.ndarray) -> bool:
    """No NaN or Inf in ``a``. A compiled loop for the 1-D FP32/FP64 vectors that per-feature
    parameters are: one call costs ~20 us with cold caches (a sporadic one-shot call), where
    ``np.isfinite(a).all()`` costs ~55 us; NumPy for everything else."""
    if a.ndim == 1 and a.dtype.char in "fd":
        return bool(_finite_vector(a))
    return bool(np.isfinite(a).all())


def check_out(out: Any, shape: tuple[int, ...], dtype: np.dtype, name: str = "out") -> None:
    """Raise a ValueError/TypeError naming ``out`` (``name``) unless it can take the result."""
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {list(out.shape)}, expected {list(shape)}")
    if np.dtype(out.dtype) != dtype:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {dtype} (the input's dtype)")
    flags = getattr(out, "flags", None)
    if flags is not None and not flags["C_CONTIGUOUS"]:
        raise ValueError(f"{name} must be C-contiguous")
    # NumPy's flags object has ``writeable``; Numba device arrays' plain dict has no such key.
    if flags is not None and not getattr(flags, "writeable", True):
        raise ValueError(f"{name} must be writeable")


def host_output(layer: Any, x: np.ndarray, out: Any,
                allocate: Callable[[tuple[int, ...], np.dtype], np.ndarray] = np.empty,
                name: str = "out") -> np.ndarray:
    """Validate a NumPy input and its ``out`` (``name``); return ``out``, allocated when None."""
    dt = check_dtype(x.dtype, "x")
    shape = layer.output_shape(x.shape)
    if out is None:
        return allocate(shape, dt)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array when x is one, got {type(out).__name__}")
    check_out(out, shape, dt, name)
    return out


def check_residual(x: Any, residual: Any) -> None:
    """Raise a ValueError/TypeError naming ``residual`` unless it matches ``x`` (the fused
    kinds add the two elementwise, so shape and dtype must agree exactly)."""
    if not hasattr(residual, "shape") or not hasattr(residual, "dtype"):
        raise TypeError(f"residual must be an array like x, got {type(residual).__name__}")
    if tuple(residual.shape) != tuple(x.shape):
        raise ValueError(f"residual has shape {list(residual.shape)}, expected x's shape "
                         f"{list(x.shape)}")
    if np.dtype(residual.dtype) != np.dtype(x.dtype):
        raise ValueError(f"residual has dtype {residual.dtype}, expected x's dtype {x.dtype}")
