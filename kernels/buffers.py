"""A small caching allocator for output arrays.

Fresh multi-megabyte arrays are mmapped by the C allocator and every page faults (and is
zeroed by the kernel) on first write: on the machines measured here that doubles, or worse,
the cost of a memory-bound kernel that allocates its result. Like PyTorch's CUDA caching
allocator, the pool keeps arrays it handed out and reuses one once nobody else references it
(CPython's reference count says so exactly: only the pool's own reference is left), so a
caller that drops its results gets warm pages back without having to manage ``out=``.
"""

from __future__ import annotations

import math
import os
import sys
import threading

import numpy as np

#: Arrays smaller than this are cheap to allocate; they bypass the pool.
MIN_BYTES = 1 << 20
#: Bytes the pool may keep alive (``NORMSERVE_POOL_BYTES``; 0 turns it off).
MAX_BYTES = int(os.environ.get("NORMSERVE_POOL_BYTES", 1 << 30))



class BufferPool:
    """Reusable arrays keyed by (shape, dtype); a buffer is free when only the pool holds it."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._buffers: list[np.ndarray] = []
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised C-contiguous array, reused from the pool when one is free."""
        if not isinstance(dtype, np.dtype):  # np.dtype() costs ~10 us with cold caches
            dtype = np.dtype(dtype)
        shape = tuple(shape)
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes < MIN_BYTES or nbytes > self.max_bytes:
            return np.empty(shape, dtype)
        with self._lock:
            for i in range(len(self._buffers)):
                candidate = self._buffers[i]
                fits = candidate.shape == shape and candidate.dtype == dtype
                del candidate  # its reference would hide whether the buffer is free
                if fits and self._free(i):
                    buf = self._buffers.pop(i)
                    self._buffers.append(buf)  # most recently used last
                    return buf
            buf = np.empty(shape, dtype)
            if self._evict(self.max_bytes - nbytes):
                self._buffers.append(buf)
            return buf

    def _evict(self, budget: int) -> bool:
        """Forget free buffers, least recently used first, until the pool fits ``budget``.

        False when the buffers still in use alone exceed it.
        """
        held = sum(b.nbytes for b in self._buffers)
        i = 0
        while held > budget and i < len(self._buffers):
            if self._free(i):
                held -= self._buffers.pop(i).nbytes
            else:
                i += 1
        return held <= budget

    def _free(self, i: int) -> bool:
        """Only the pool references buffer ``i``: its list slot, plus getrefcount's argument."""
        return sys.getrefcount(self._buffers[i]) == 2

    def clear(self) -> None:
        with self._lock:
            self._buffers.clear()


POOL = BufferPool()
