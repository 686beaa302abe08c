"""Which element types the kernels take, and how half-precision inputs reach them.

Numba's CPU target has no float16 or bfloat16 type. Half-precision data is computed in FP32
and rounded back once on output: FP16 is widened at the boundary (NumPy converts it with SIMD),
BF16 reaches the CPU kernels as its bits, widened and rounded inside them (``kernels.cpu``).
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
_NAMES: dict[np.dtype, str] = {d: name for name, d in DATATYPES.items()}  # one hash lookup
HALF: tuple[np.dtype, ...] = tuple(d for d in (FLOAT16, BFLOAT16) if d is not None)

#: Supported dtype -> the dtype the kernels run in (FP64 for FP64, FP32 for everything
#: narrower). A dict, so that checking an input's dtype is one hash lookup on the hot path.
COMPUTE: dict[np.dtype, np.dtype] = {d: FLOAT64 if d == FLOAT64 else FLOAT32 for d in SUPPORTED}


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """The dtype the kernels run in for a supported ``dtype``."""
    return COMPUTE[dtype]


def check_dtype(dtype: np.dtype, name: str = "x") -> np.dtype:
    """Return `dtype` if a kernel accepts it, else raise a TypeError naming the argument."""
    if isinstance(dtype, np.dtype) and dtype in COMPUTE:  # the hot path: one lookup
        return dtype
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if resolved not in COMPUTE:
        names = ", ".join(str(d) for d in SUPPORTED)
        raise TypeError(f"{name} has dtype {dtype}; supported dtypes are {names}")
    return resolved


def datatype_name(dtype: np.dtype) -> str:
    """The Open Inference Protocol name of a supported dtype (FP32, ...)."""
    name = _NAMES.get(dtype)
    if name is None:
        name = _NAMES.get(np.dtype(dtype)) if isinstance(dtype, type) else None  # np.float32
    if name is None:
        raise TypeError(f"dtype {dtype} has no inference-protocol datatype")
    return name
