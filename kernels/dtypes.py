"""Which element types the kernels take, and how half-precision inputs reach them.

Numba's CPU target has no float16 or bfloat16 type, so half-precision inputs are widened to
float32 at the boundary, computed with FP32 accumulation, and rounded back once on output.
"""

from __future__ import annotations

import numpy as np

try:  # ml_dtypes is optional: it brings bfloat16 to NumPy.
    from ml_dtypes import bfloat16 as _bfloat16

    BFLOAT16: np.dtype | None = np.dtype(_bfloat16)
except ImportError:  # pragma: no cover - exercised only without ml_dtypes
    BFLOAT16 = None

FLOAT16 = np.dtype(np.float16)
FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)

#: The dtypes a layer accepts, by their Open Inference Protocol names.
DATATYPES: dict[str, np.dtype] = {"FP16": FLOAT16, "FP32": FLOAT32, "FP64": FLOAT64}
if BFLOAT16 is not None:
    DATATYPES["BF16"] = BFLOAT16

SUPPORTED: tuple[np.dtype, ...] = tuple(DATATYPES.values())
HALF: tuple[np.dtype, ...] = tuple(d for d in (FLOAT16, BFLOAT16) if d is not None)


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the kernels run in: FP64 for FP64 inputs, FP32 for everything narrower."""
    return FLOAT64 if dtype == FLOAT64 else FLOAT32


def check_dtype(dtype: np.dtype, name: str = "x") -> np.dtype:
    """Return `dtype` if a kernel accepts it, else raise a TypeError naming the argument."""
    dtype = np.dtype(dtype)
    if dtype not in SUPPORTED:
        names = ", ".join(str(d) for d in SUPPORTED)
        raise TypeError(f"{name} has dtype {dtype}; supported dtypes are {names}")
    return dtype


def datatype_name(dtype: np.dtype) -> str:
    """The Open Inference Protocol name of a supported dtype (FP32, ...)."""
    for name, d in DATATYPES.items():
        if d == dtype:
            return name
    raise TypeError(f"dtype {dtype} has no inference-protocol datatype")
