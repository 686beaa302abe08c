"""The output pool reuses only arrays nobody references, so results are never overwritten."""

from __future__ import annotations

import numpy as np

from normserve import kernels
from normserve.kernels.buffers import BufferPool


def test_free_buffer_is_reused_and_held_one_is_not():
    pool = BufferPool(max_bytes=64 << 20)
    a = pool.empty((1024, 1024), np.float32)
    address = a.ctypes.data
    del a
    b = pool.empty((1024, 1024), np.float32)
    assert b.ctypes.data == address
    c = pool.empty((1024, 1024), np.float32)
    assert c.ctypes.data != b.ctypes.data
    view = b[3]
    del b
    d = pool.empty((1024, 1024), np.float32)
    assert d.ctypes.data != address, "a live view must keep its base out of the pool"
    assert view.base is not None


def test_pool_respects_its_byte_budget():
    pool = BufferPool(max_bytes=8 << 20)
    held = [pool.empty((1 << 20,), np.float32) for _ in range(4)]  # 4 MiB each
    assert sum(b.nbytes for b in pool._buffers) <= 8 << 20
    assert len({h.ctypes.data for h in held}) == 4


def test_results_held_by_the_caller_survive_later_calls():
    x = np.random.default_rng(0).standard_normal((2048, 512)).astype(np.float32)
    first = kernels.layer_norm(x, [512])
    kept = first.copy()
    for _ in range(3):
        kernels.layer_norm(x * 2 + 1, [512])
    np.testing.assert_array_equal(first, kept)
