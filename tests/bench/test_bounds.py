"""The fused norms' stream bound (bench/bounds.py): the stream kernel moves the fused kinds'
bytes and nothing else, and the table names each column's ratio."""

from __future__ import annotations

import numpy as np

from normserve.bench import bounds


def test_stream_kernel_writes_the_sum_to_both_outputs():
    rng = np.random.default_rng(0)
    x, r = (rng.standard_normal((5, 33)).astype(np.float32) for _ in range(2))
    h, y = np.full_like(x, np.nan), np.full_like(x, np.nan)
    bounds._add_copy(x, r, h, y)
    np.testing.assert_array_equal(h, x + r)
    np.testing.assert_array_equal(y, x + r)


def test_table_ratios_are_against_the_copy_and_the_stream():
    """A fused kernel at twice the stream kernel's time reaches 0.50 of the bound."""
    copy_s = 2 * (64 << 20) * 4 / 20e9  # a 20 GB/s copy
    stream_s = 4 * 8 * 16 * 4 / 40e9
    text = bounds.table((8, 16), 1, [("copy (256 MiB)", copy_s), ("stream", stream_s),
                                     ("fused", 2 * stream_s)])
    copy, stream, fused = text.splitlines()
    assert copy.endswith("| 20.0 | 1.00 |  |")
    assert stream.endswith("| 2.00 | 1.00 |")
    assert fused.endswith("| 1.00 | 0.50 |")
