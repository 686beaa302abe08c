"""Device selection: which backend module runs a prepared layer."""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType

DEVICES = ("cpu", "cuda", "auto")


@cache
def cuda_available() -> bool:
    """True when numba-cuda is installed and sees a GPU (or its simulator is enabled)."""
    try:
        from numba import cuda
    except ImportError:
        return False
    try:
        return bool(cuda.is_available())
    except Exception:  # a broken driver install is "no GPU", not a crash
        return False


def resolve_device(device: str) -> str:
    """Map ``"auto"`` to ``"cuda"`` when a GPU is present, else ``"cpu"``; validate the rest."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    if device == "cuda" and not cuda_available():
        raise ValueError("device='cuda' but no CUDA GPU is available (install the 'cuda' extra "
                         "and check the driver, or use device='cpu')")
    return device


@cache
def backend_for(device: str) -> ModuleType:
    """The module holding the kernels of a resolved device (cached: layers are built per
    one-shot call, and the import machinery is slow with cold caches)."""
    return importlib.import_module(f"normserve.kernels.{device}")
