"""Compile each CPU kernel twice, threaded and serial, and run the one the work calls for.

Waking Numba's thread pool costs tens of microseconds: more than a whole single-row request
takes to compute, which is what a server mostly sees. Both variants come from the same
source with the same flags, and each row is reduced by the same inner loops in either,
so the choice never changes a result (the batch-invariance tests hold across the threshold).
"""

from __future__ import annotations

import os
import types
from collections.abc import Callable
from typing import Any

from numba import njit

#: Work (elements, or multiply-adds for the GEMM) from which the threaded variant runs.
PARALLEL_MIN_WORK = int(os.environ.get("NORMSERVE_PARALLEL_MIN_WORK", 1 << 15))


def _serial_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The same function under its own name, so Numba caches the two variants apart."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                              fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + "_serial"
    copy.__doc__ = fn.__doc__
    return copy


class ThreadedKernel:
    """A kernel with a threaded (``prange``) and a serial variant, picked per call."""

    def __init__(self, fn: Callable[..., Any], work: Callable[..., int], **options: Any):
        self.threaded = njit(parallel=True, **options)(fn)
        self.serial = njit(parallel=False, **options)(_serial_copy(fn))
        self._work = work
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __call__(self, *args: Any) -> Any:
        big = self._work(*args) >= PARALLEL_MIN_WORK
        return (self.threaded if big else self.serial)(*args)


def threaded_kernel(work: Callable[..., int] = lambda x, *_: x.size,
                    **options: Any) -> Callable[[Callable[..., Any]], ThreadedKernel]:
    """Decorator: ``@threaded_kernel(nogil=True, cache=True, ...)`` over a ``prange`` kernel."""
    return lambda fn: ThreadedKernel(fn, work, **options)
