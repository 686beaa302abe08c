"""Argument checks shared by every backend, so errors read the same on CPU and GPU."""

from __future__ import annotations

from typing import Any

import numpy as np


def check_out(out: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Raise a ValueError/TypeError naming ``out`` unless it can take the result as is."""
    if tuple(out.shape) != tuple(shape):
        raise ValueError(f"out has shape {list(out.shape)}, expected {list(shape)}")
    if np.dtype(out.dtype) != dtype:
        raise TypeError(f"out has dtype {out.dtype}, expected {dtype} (the input's dtype)")
    flags = getattr(out, "flags", None)
    if flags is not None and not flags["C_CONTIGUOUS"]:
        raise ValueError("out must be C-contiguous")
    # NumPy's flags object has ``writeable``; Numba device arrays' plain dict has no such key.
    if flags is not None and not getattr(flags, "writeable", True):
        raise ValueError("out must be writeable")
