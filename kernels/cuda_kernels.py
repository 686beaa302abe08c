"""``@cuda.jit`` kernels of the forward passes; ``kernels.cuda`` validates and launches them.

Kernels are built per accumulation type (float32 for FP16/FP32 data, float64 for FP64) because
shared and local arrays need their element type at compile time; the input and output element
types stay free, so FP16 is read and written natively and widened only in registers.

Numerics (the CPU path's guarantees, without its float64 accumulation):
- Row statistics are a *corrected* two-pass: pass 1 gives the mean ``m``; pass 2 sums the
  deviations ``d = x - m`` and ``d * d``. The deviations' mean ``c = sum(d) / n`` is the error
  of ``m``, so ``(x - m) - c`` is the split-mean trick of the CPU path, and
  ``var = sum(d * d) / n - c * c``. This keeps a layer norm of ``1e4 + N(0, 1)`` in FP32 at the
  float64 reference within ~1e-6 where a plain FP32 mean alone would be off by ~1e-3.
- Reductions are shared-memory trees of a fixed shape that depends only on the row length,
  and the GEMM sums every output over the inputs in ascending order: no atomics, no split-K,
  so a row's result is bitwise the same in any batch.
- Warp shuffles would save a few barriers per row, but Numba's CUDA simulator (which CI runs)
  does not implement them; one code path that CI executes beats a faster untested one.
"""

from __future__ import annotations

import math
from functools import cache

from numba import cuda, float64

#: Values each thread keeps in registers between the passes over its row; longer rows re-read
#: the rest from global memory (it is then hot in L1/L2).
ITEMS = 8
#: Threads of one normalisation block (rows of fewer threads share a block).
MAX_THREADS = 1024
#: Threads a block of short rows holds in all.
ROW_BLOCK = 256

#: GEMM tiling: a block of TILE_THREADS x TILE_THREADS threads computes a TILE x TILE output
#: tile, each thread a MICRO x MICRO register tile strided by TILE_THREADS; K steps by TILE_K.
TILE_THREADS = 16
MICRO = 4
TILE = TILE_THREADS * MICRO
TILE_K = 16
#: Row length of the transposed x tile, padded by one against shared-memory bank conflicts.
XS_COLS = TILE + 1


def row_launch(n: int, rows: int) -> tuple[int, tuple[int, int]]:
    """Grid and block for ``rows`` rows of ``n`` values: the block shape depends on ``n`` only."""
    width = 32
    while width < MAX_THREADS and width * ITEMS < n:
        width *= 2
    per_block = max(1, ROW_BLOCK // width)
    return (rows + per_block - 1) // per_block, (width, per_block)


def norm_kernel(acc):
    """Layer/RMS/group/instance norm kernel accumulating in the Numba type ``acc``."""
    return _norm_kernels(acc)[0]


def add_norm_kernel(acc):
    """The fused residual add + layer/RMS norm kernel accumulating in ``acc``."""
    return _norm_kernels(acc)[1]


@cache
def _norm_kernels(acc):
    """Both row kernels of one accumulation type, sharing the row normaliser ``norm_row``."""

    @cuda.jit(device=True)
    def block_sum2(sh_a, sh_b, base, tx, width, a, b):
        """Sums of ``a`` and ``b`` over the ``width`` threads of one row (a fixed tree)."""
        sh_a[base + tx] = a
        sh_b[base + tx] = b
        cuda.syncthreads()
        step = width // 2
        while step > 0:
            if tx < step:
                sh_a[base + tx] += sh_a[base + tx + step]
                sh_b[base + tx] += sh_b[base + tx + step]
            cuda.syncthreads()
            step //= 2
        ra = sh_a[base]
        rb = sh_b[base]
        cuda.syncthreads()  # the buffers are reused by the next reduction
        return ra, rb

    @cuda.jit(device=True)
    def norm_row(x, out, weight, bias, groups, spatial, eps, center):
        """Normalise this thread row's row of ``x`` (rows, n); the affine is per
        ``j // spatial`` channel.

        Layer norm and RMSNorm are ``groups = spatial = 1`` (one weight per feature); a row
        of group norm is (sample, group), its channel ``(r % groups) * n / spatial + j // spatial``.
        Every thread reaches every barrier, also those of a block's rows past the end.
        """
        rows, n = x.shape
        width = cuda.blockDim.x
        tx = cuda.threadIdx.x
        r = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        base = cuda.threadIdx.y * width
        live = r < rows
        sh_a = cuda.shared.array(MAX_THREADS, acc)
        sh_b = cuda.shared.array(MAX_THREADS, acc)
        vals = cuda.local.array(ITEMS, acc)
        zero = acc(0.0)
        count = acc(n)

        mean = zero
        if center:
            s = zero
            for k in range(ITEMS):
                j = tx + k * width
                v = zero
                if live and j < n:
                    v = acc(x[r, j])
                vals[k] = v
                s += v
            j = tx + ITEMS * width
            while live and j < n:
                s += acc(x[r, j])
                j += width
            total, _ = block_sum2(sh_a, sh_b, base, tx, width, s, zero)
            mean = total / count
        else:
            for k in range(ITEMS):
                j = tx + k * width
                v = zero
                if live and j < n:
                    v = acc(x[r, j])
                vals[k] = v

        s1 = zero
        s2 = zero
        for k in range(ITEMS):
            if live and tx + k * width < n:
                d = vals[k] - mean
                s1 += d
                s2 += d * d
        j = tx + ITEMS * width
        while live and j < n:
            d = acc(x[r, j]) - mean
            s1 += d
            s2 += d * d
            j += width
        sum_d, sum_dd = block_sum2(sh_a, sh_b, base, tx, width, s1, s2)
        corr = zero
        if center:
            corr = sum_d / count
        var = sum_dd / count - corr * corr
        if var < zero:  # rounding only; NaN fails the test and propagates
            var = zero
        rstd = acc(1.0 / math.sqrt(float64(var) + eps))

        if live:
            first = (r % groups) * (n // spatial)
            for k in range(ITEMS):
                j = tx + k * width
                if j < n:
                    c = first + (j if spatial == 1 else j // spatial)
                    out[r, j] = ((vals[k] - mean) - corr) * rstd * weight[c] + bias[c]
            j = tx + ITEMS * width
            while j < n:
                c = first + (j if spatial == 1 else j // spatial)
                out[r, j] = ((acc(x[r, j]) - mean) - corr) * rstd * weight[c] + bias[c]
                j += width

    @cuda.jit
    def norm_rows(x, out, weight, bias, groups, spatial, eps, center):
        norm_row(x, out, weight, bias, groups, spatial, eps, center)

    @cuda.jit
    def add_norm_rows(x, residual, skip, h, out, weight, bias, eps, center, has_skip):
        """``h = x + residual`` (one add, rounded once on the store), or with ``has_skip`` the
        float64 sum ``x + residual + skip`` rounded once; then ``norm_row`` of ``h``.

        Each thread re-reads only the ``h`` elements it wrote itself, so no barrier is needed
        before the normaliser; ``h``/``out`` may be ``residual``/``x`` (same index only).
        """
        rows, n = x.shape
        width = cuda.blockDim.x
        r = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if r < rows:
            j = cuda.threadIdx.x
            while j < n:
                if has_skip:
                    h[r, j] = (float64(x[r, j]) + float64(residual[r, j])) + skip[j]
                else:
                    h[r, j] = acc(x[r, j]) + acc(residual[r, j])
                j += width
        norm_row(h, out, weight, bias, 1, 1, eps, center)

    return norm_rows, add_norm_rows


@cuda.jit
def channel_affine(x, out, scale, shift, channels, spatial):
    """Batch norm on flat (N * C * S) data: ``y = x * scale[c] + shift[c]``, float64 maths.

    The folded scale and shift are float64 (as on the CPU), so the product rounds once.
    """
    i = cuda.grid(1)
    stride = cuda.gridsize(1)
    size = x.shape[0]
    while i < size:
        c = (i // spatial) % channels
        out[i] = float64(x[i]) * scale[c] + shift[c]
        i += stride


@cache
def linear_kernel(acc):
    """Tiled shared-memory GEMM ``out = x @ weight_t + bias`` accumulating in ``acc``."""

    @cuda.jit
    def linear(x, weight_t, bias, out):
        """Each output sums over k ascending, one FMA at a time: batch-invariant by design.

        Tiles past the matrix edges are zero-padded; the padding adds exact zeros at the end
        of every sum, the same for any batch size.
        """
        rows, k_in = x.shape
        n_out = weight_t.shape[1]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TILE_THREADS + tx
        threads = TILE_THREADS * TILE_THREADS
        row0 = cuda.blockIdx.x * TILE
        col0 = cuda.blockIdx.y * TILE
        xs = cuda.shared.array((TILE_K, XS_COLS), acc)  # transposed: k-major
        ws = cuda.shared.array((TILE_K, TILE), acc)
        sums = cuda.local.array((MICRO, MICRO), acc)
        zero = acc(0.0)
        for a in range(MICRO):
            for b in range(MICRO):
                sums[a, b] = zero

        for k0 in range(0, k_in, TILE_K):
            for e in range(TILE * TILE_K // threads):
                idx = tid + e * threads
                rr = idx // TILE_K
                kk = idx % TILE_K
                v = zero
                if row0 + rr < rows and k0 + kk < k_in:
                    v = acc(x[row0 + rr, k0 + kk])
                xs[kk, rr] = v
            for e in range(TILE * TILE_K // threads):
                idx = tid + e * threads
                kk = idx // TILE
                cc = idx % TILE
                v = zero
                if k0 + kk < k_in and col0 + cc < n_out:
                    v = acc(weight_t[k0 + kk, col0 + cc])
                ws[kk, cc] = v
            cuda.syncthreads()
            for kk in range(TILE_K):
                for a in range(MICRO):
                    xv = xs[kk, ty + a * TILE_THREADS]
                    for b in range(MICRO):
                        sums[a, b] += xv * ws[kk, tx + b * TILE_THREADS]
            cuda.syncthreads()

        for a in range(MICRO):
            r = row0 + ty + a * TILE_THREADS
            if r < rows:
                for b in range(MICRO):
                    c = col0 + tx + b * TILE_THREADS
                    if c < n_out:
                        out[r, c] = sums[a, b] + bias[c]

    return linear


def linear_launch(rows: int, n_out: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Grid (row tiles, column tiles) and block of the GEMM."""
    grid = ((rows + TILE - 1) // TILE, (n_out + TILE - 1) // TILE)
    return grid, (TILE_THREADS, TILE_THREADS)
