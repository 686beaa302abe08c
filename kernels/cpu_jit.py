"""How the CPU kernels are compiled and launched.

- ``jit``: ``numba.njit`` with the on-disk cache when a cache directory is writable, and
  without it otherwise (a read-only container must still start, only slower).
- ``threaded_kernel``: each kernel compiled twice, threaded and serial, picked per call:
  serial for small work, or when Numba may use one thread only. Waking Numba's thread pool
  costs tens of microseconds, more than a whole single-row request takes to compute, which
  is what a server mostly sees. Both variants come from the same source with the same
  flags, and each row is reduced by the same inner loops in either, so the choice never
  changes a result (the batch-invariance tests cross it). Threaded launches are
  serialised: Numba's portable ``workqueue`` threading layer aborts the process on
  concurrent launches, and one launch already uses every core.
"""

from __future__ import annotations

import os
import threading
import types
from collections.abc import Callable
from typing import Any

from numba import get_num_threads, njit
from numba.np.ufunc import parallel as _parallel

#: Work (elements, or multiply-adds for the GEMM) from which the threaded variant runs, until
#: ``set_parallel_min_work`` says otherwise.
PARALLEL_MIN_WORK = int(os.environ.get("NORMSERVE_PARALLEL_MIN_WORK", 1 << 15))
_parallel_min_work = PARALLEL_MIN_WORK


def parallel_min_work() -> int:
    """The work from which the threaded variants run in this process."""
    return _parallel_min_work


def set_parallel_min_work(work: int) -> None:
    """Run the threaded variants from ``work`` on, process-wide. A server raises it: its
    other cores are busy with requests, so a threaded launch often waits for a Numba worker
    the OS has descheduled (measured: 32 concurrent 1x1024 requests took 230 us each with
    the other core busy, 45 us with it idle), while a serial kernel never waits."""
    if work < 1:
        raise ValueError(f"parallel_min_work must be >= 1, got {work}")
    global _parallel_min_work
    _parallel_min_work = work


def _serial_copy(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The same function under its own name, so Numba caches the two variants apart."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                              fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + "_serial"
    copy.__doc__ = fn.__doc__
    return copy


_LAUNCH = threading.Lock()


def _num_threads() -> int:
    """``numba.get_num_threads()``, through the threading layer's C entry point directly
    once the layer is up: the public function takes a lock and checks the launch first,
    which costs ~40 us with cold caches (a sporadic call), the C call ~10 us."""
    n = get_num_threads()  # launches the threading layer, once
    fast = getattr(_parallel, "_get_num_threads", None)
    if callable(fast) and fast() == n:
        globals()["_num_threads"] = fast
    return n


def jit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``njit(**options)``, dropping ``cache=True`` where Numba finds nowhere to write."""

    def wrap(fn: Callable[..., Any]) -> Any:
        try:
            return njit(**options)(fn)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available"
            if not options.get("cache") or "cannot cache" not in str(exc):
                raise
            return njit(**{**options, "cache": False})(fn)

    return wrap


class ThreadedKernel:
    """A kernel with a threaded (``prange``) and a serial variant, picked per call."""

    def __init__(self, fn: Callable[..., Any], work: Callable[..., int], **options: Any):
        self.threaded = jit(parallel=True, **options)(fn)
        self.serial = jit(parallel=False, **options)(_serial_copy(fn))
        self._work = work
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__

    def __call__(self, *args: Any) -> Any:
        # One thread allowed: the serial variant, without the parallel launch (~0.1 ms).
        if self._work(*args) < _parallel_min_work or _num_threads() == 1:
            return self.serial(*args)
        with _LAUNCH:
            return self.threaded(*args)


def threaded_kernel(work: Callable[..., int] = lambda x, *_: x.size,
                    **options: Any) -> Callable[[Callable[..., Any]], ThreadedKernel]:
    """Decorator: ``@threaded_kernel(nogil=True, cache=True, ...)`` over a ``prange`` kernel."""
    return lambda fn: ThreadedKernel(fn, work, **options)
