"""The linear layers' GEMM across its tile and k-block edges: each row's result is the same
bits alone as in any batch, and within tolerance of float64."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from normserve.kernels import cpu_gemm

ROWS = cpu_gemm.TILE_ROWS[4]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize(("k_in", "n_out"), [
    (1, 1),
    (cpu_gemm.K_BLOCK - 1, cpu_gemm.TILE_COLS + 1),
    (2 * cpu_gemm.K_BLOCK + 3, 2 * cpu_gemm.TILE_COLS - 1),
])
def test_rows_alone_equal_rows_in_batches(dtype, k_in, n_out):
    rng = np.random.default_rng(k_in)
    rows = 2 * ROWS + 3  # two full tiles and a short one
    x = rng.standard_normal((rows, k_in)).astype(dtype)
    w = rng.standard_normal((n_out, k_in)).astype(dtype)
    bias = rng.standard_normal(n_out).astype(dtype)
    packed = cpu_gemm.pack_weight(w)

    def run(xs: np.ndarray) -> np.ndarray:
        out = np.full((xs.shape[0], n_out), np.nan, dtype)
        cpu_gemm.gemm(xs, packed, bias, out)
        return out

    full = run(x)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    # A chain of k FMAs errs by at most about k unit roundoffs of the sum of |products|.
    bound = (k_in + 1) * np.finfo(dtype).eps * (np.abs(x64) @ np.abs(w64).T + np.abs(bias))
    assert np.all(np.abs(full - (x64 @ w64.T + bias)) <= bound)
    for i in (0, ROWS - 1, ROWS, rows - 1):
        np.testing.assert_array_equal(run(x[i : i + 1]), full[i : i + 1])
    np.testing.assert_array_equal(run(x[1 : ROWS + 2]), full[1 : ROWS + 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
def test_long_and_short_row_blocks_give_the_same_bits(dtype, monkeypatch):
    """A weight too large for the cache is streamed under long row blocks: no bit changes."""
    rng = np.random.default_rng(3)
    rows = cpu_gemm.LONG_ROW_BLOCK + cpu_gemm.ROW_BLOCK + 5
    x = rng.standard_normal((rows, 300)).astype(dtype)
    packed = cpu_gemm.pack_weight(rng.standard_normal((70, 300)).astype(dtype))
    bias = rng.standard_normal(70).astype(dtype)
    outs = []
    for cached in (1 << 40, 0):  # the weight fits the cache; it does not
        monkeypatch.setattr(cpu_gemm, "CACHED_WEIGHT_BYTES", cached)
        outs.append(np.empty((rows, 70), dtype))
        cpu_gemm.gemm(x, packed, bias, outs[-1])
    np.testing.assert_array_equal(outs[0], outs[1])


_PROBE = """
import numpy as np, sys
from normserve.kernels import cpu_gemm
rng = np.random.default_rng(5)
x = rng.standard_normal((29, 700)).astype(np.float32)
w = rng.standard_normal((45, 700)).astype(np.float32)
out = np.empty((29, 45), np.float32)
cpu_gemm.gemm(x, cpu_gemm.pack_weight(w), np.zeros(45, np.float32), out)
sys.stdout.write(f"{cpu_gemm.TILE_COLS} {out.tobytes().hex()}")
"""


def test_every_vector_width_gives_the_same_bits(tmp_path):
    """AVX2's tiles (haswell) and the host's compute each output by the same chain."""
    runs = []
    for cpu in ("haswell", "host"):
        env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CACHE_DIR": str(tmp_path / cpu)}
        proc = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True,
                              env=env, timeout=300, check=True)
        runs.append(proc.stdout.split())
    (haswell_cols, haswell), (_, host) = runs
    assert haswell_cols == "16"
    assert haswell == host
