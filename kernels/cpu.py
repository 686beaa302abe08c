"""Numba CPU kernels: the forward passes, parallel over independent rows.

Every kernel writes into a caller-given output and releases the GIL, so the service can run
it off its event loop. Each row (a sample's normalised slice, a (sample, channel) or a
(sample, group)) is reduced by the same code whatever the batch size, so a row's result is
bitwise independent of the rows it is batched with.

Numerics: statistics accumulate in float64 whatever the input precision (the reductions are
memory-bound, so the wider adds are free; FP32 rows take one shifted pass, FP64 rows two, see
``_row_moments``), and the output pass subtracts
the mean as a float64 split into two input-precision parts, ``(x - m_hi) - m_lo``; that keeps
large-offset data (``1e4 + N(0, 1)`` in FP32) accurate without widening the output pass.
Only the reductions may re-associate (for vectorised sums); nothing assumes finite values,
so NaN and Inf propagate exactly as IEEE says.
"""

from __future__ import annotations

import sys

import numpy as np
from numba import prange

from . import cpu_gemm, dtypes
from .buffers import POOL
from .checks import check_residual, host_output
from .cpu_jit import jit, threaded_kernel

_REDUCE = {"reassoc", "contract", "nsz", "arcp"}
# The kernels themselves allow only FMA contraction: re-association would fold
# ``(x - m_hi) - m_lo`` into ``x - (m_hi + m_lo)`` and lose the split mean's low part.
_OPTS = {"nogil": True, "cache": True, "fastmath": {"contract"}}


@jit(nogil=True, cache=True, fastmath=_REDUCE)
def _row_moments(row, center):
    """(mean, mean square of the deviations) of one row, accumulated in float64.

    FP32 rows take one pass of shifted sums over ``x - x[0]``: in float64 that is exact
    enough for any FP32 data, since a sample lies within sqrt(n) standard deviations of the
    mean, so the cancellation costs at most about n**2 float64 ulps (4e-9 relative for
    n = 6272), and it saves a pass over rows that spill out of L1 (5-15% measured). FP64 rows
    keep the two-pass algorithm: their tolerance asks for every bit.
    """
    n = row.shape[0]
    if row.itemsize == 4:
        if not center:  # RMSNorm: the mean square about zero, one pass of squares only
            ss = 0.0
            for j in range(n):
                v = np.float64(row[j])
                ss += v * v
            return 0.0, ss / n
        shift = np.float64(row[0])
        s = 0.0
        ss = 0.0
        for j in range(n):
            d = row[j] - shift
            s += d
            ss += d * d
        m = s / n
        return shift + m, max(ss / n - m * m, 0.0)
    mean = 0.0
    if center:
        s = 0.0
        for j in range(n):
            s += row[j]
        mean = s / n
    ss = 0.0
    for j in range(n):
        d = row[j] - mean
        ss += d * d
    return mean, ss / n


@jit(**_OPTS)
def _normaliser(row, center, eps):
    """(m_hi, m_lo, rstd) in the row's dtype: the split mean and 1/sqrt(var + eps).

    Compiled without re-association, which would fold ``mean - m_hi`` away.
    """
    mean, var = _row_moments(row, center)
    m_hi = row.dtype.type(mean)
    m_lo = row.dtype.type(mean - m_hi)
    return m_hi, m_lo, row.dtype.type(1.0 / np.sqrt(var + eps))


@threaded_kernel(**_OPTS)
def _row_norm(x, out, weight, bias, eps, center):
    """Layer norm (``center``) or RMSNorm over each row of ``x`` (rows, features).

    ``weight`` and ``bias`` have one value per feature (ones and zeros when absent; RMSNorm
    reads no bias). RMSNorm's output loop is its own: without the mean and bias terms it
    is ~20% faster on rows streamed from DRAM (256x4096 FP32, measured), not just fewer ops.
    """
    rows, n = x.shape
    for r in prange(rows):
        row = x[r]
        m_hi, m_lo, rstd = _normaliser(row, center, eps)
        dst = out[r]
        if center:
            for j in range(n):
                dst[j] = ((row[j] - m_hi) - m_lo) * rstd * weight[j] + bias[j]
        else:
            for j in range(n):
                dst[j] = row[j] * rstd * weight[j]


@threaded_kernel(**_OPTS)
def _grouped_norm(x, out, weight, bias, groups, spatial, eps):
    """Instance norm (one channel a group) or group norm over rows of (sample, group).

    ``x`` is (samples * groups, channels_per_group * spatial); ``weight`` and ``bias`` have
    one value per channel (ones and zeros when absent).
    """
    rows, n = x.shape
    per_group = n // spatial
    for r in prange(rows):
        m_hi, m_lo, rstd = _normaliser(x[r], True, eps)
        first = (r % groups) * per_group
        for k in range(per_group):
            scale = rstd * weight[first + k]
            shift = bias[first + k]
            # One channel's slice as its own view: LLVM vectorises this loop, not the offset one.
            src = x[r, k * spatial : (k + 1) * spatial]
            dst = out[r, k * spatial : (k + 1) * spatial]
            for s in range(spatial):
                dst[s] = ((src[s] - m_hi) - m_lo) * scale + shift


@threaded_kernel(**_OPTS)
def _channel_affine(x, out, scale, shift):
    """Batch norm with folded statistics: ``y = x * scale[c] + shift[c]`` on (N, C, S).

    ``scale`` and ``shift`` are float64, so the product is formed in float64 and rounded once.
    """
    samples, channels, spatial = x.shape
    if spatial == 1:
        for i in prange(samples):
            for c in range(channels):
                out[i, c, 0] = x[i, c, 0] * scale[c] + shift[c]
    else:
        for i in prange(samples * channels):
            n = i // channels
            c = i % channels
            a = scale[c]
            b = shift[c]
            src = x[n, c]
            dst = out[n, c]
            for s in range(spatial):
                dst[s] = src[s] * a + b


# The fused norms run the row-norm kernel itself on each summed row (its serial variant, one
# row at a time): a row's result never depends on its batch, so ``y`` is bitwise the unfused
# norm of ``h``, whatever that kernel becomes.
_norm_rows = _row_norm.serial


@threaded_kernel(**_OPTS)
def _add_row_norm(x, residual, skip, h, out, weight, bias, eps, center, has_skip):
    """``h = x + residual`` (one correctly rounded add), or with ``has_skip`` the float64 sum
    ``x + residual + skip`` rounded once; then ``row_norm`` of each ``h`` row while it is
    still in cache: x and residual read once, h and out written once.

    ``h``/``out`` may be ``residual``/``x`` themselves: every element is read before it is
    written, at the same index. Without a skip bias no zeros are added (``-0 + 0`` is ``+0``).
    """
    for r in prange(x.shape[0]):
        _add_rows(x, residual, skip, h, r, 1, has_skip)
        _norm_rows(h[r : r + 1], out[r : r + 1], weight, bias, eps, center)


@jit(**_OPTS)
def _add_rows(src, res, skip, dst, first, m, has_skip):
    """Rows ``first .. first + m``: ``dst = src + res`` rounded once (with a skip bias: the
    float64 sum of the three), indexing the 2-D arrays (a row slice would cost a reference
    count per row)."""
    for i in range(first, first + m):
        if has_skip:
            for j in range(dst.shape[1]):
                dst[i, j] = (np.float64(src[i, j]) + np.float64(res[i, j])) + skip[j]
        else:
            for j in range(dst.shape[1]):
                dst[i, j] = src[i, j] + res[i, j]


# --- bfloat16 -----------------------------------------------------------------------------
# Numba has no bfloat16 type: BF16 data reaches the kernels as its bits (uint16 arrays). The
# row norms widen each row into an FP32 scratch row in cache, run the FP32 row kernel on it
# and round the result back, so BF16 moves 2 bytes per element through memory, not the 10 of
# widening the whole tensor first; the other kinds widen whole tensors, with a compiled loop.
BITS = np.dtype(np.uint16)
_BLOCK_ELEMS = 4096  # FP32 elements per scratch block: a few blocks stay in L1
_BLOCKS_PER_TASK = 16  # blocks sharing one scratch allocation


@jit(**_OPTS)
def _rounded(b):
    """float32 bits -> bfloat16 bits, rounded to nearest, ties to even (ml_dtypes' and
    PyTorch's rounding); a NaN becomes the quiet NaN of its sign, as ml_dtypes rounds it. A
    select, not a branch, so that the loops calling it vectorise."""
    high = b >> np.uint32(16)
    rounded = (b + np.uint32(0x7FFF) + (high & np.uint32(1))) >> np.uint32(16)
    nan = (high & np.uint32(0x8000)) | np.uint32(0x7FC0)
    return np.uint16(nan if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000) else rounded)


# The block helpers index whole 2-D arrays: a row slice per row costs a reference count
# (two atomic operations), which dominated rows of 128 elements.
@jit(**_OPTS)
def _widen_block(bits, r0, m, wide):
    """Rows ``r0 .. r0 + m`` of ``bits`` into the first ``m`` rows of ``wide`` (float32 seen
    as uint32): exact, the same sign, exponent and top mantissa bits."""
    for i in range(m):
        for j in range(bits.shape[1]):
            wide[i, j] = np.uint32(bits[r0 + i, j]) << np.uint32(16)


@jit(**_OPTS)
def _narrow_block(wide, m, bits, r0):
    """The first ``m`` rows of ``wide`` (float32 seen as uint32) rounded into rows
    ``r0 .. r0 + m`` of ``bits``."""
    for i in range(m):
        for j in range(bits.shape[1]):
            bits[r0 + i, j] = _rounded(wide[i, j])


@threaded_kernel(**_OPTS)
def widen_bf16(bits, dst):
    """Whole (rows, n) arrays, for the kernels that have no bfloat16 variant."""
    wide = dst.view(np.uint32)
    for r in prange(bits.shape[0]):
        for j in range(bits.shape[1]):
            wide[r, j] = np.uint32(bits[r, j]) << np.uint32(16)


@threaded_kernel(**_OPTS)
def narrow_bf16(src, bits):
    wide = src.view(np.uint32)
    for r in prange(src.shape[0]):
        for j in range(src.shape[1]):
            bits[r, j] = _rounded(wide[r, j])


@threaded_kernel(**_OPTS)
def _row_norm_bf16(x, out, weight, bias, eps, center):
    """``_row_norm`` on bfloat16 bits, a block of rows at a time widened and rounded back in
    cache (one call of the FP32 kernel per block: short rows pay no per-row call)."""
    rows, n = x.shape
    block = max(1, _BLOCK_ELEMS // n)
    step = block * _BLOCKS_PER_TASK
    for task in prange((rows + step - 1) // step):
        # Whole blocks always (a short last one computes zero rows it never writes out), so
        # the FP32 kernel sees the C-contiguous rows it sees in FP32.
        buf = np.zeros((2, block, n), np.float32)
        a, b = buf[0], buf[1]
        aw, bw = a.view(np.uint32), b.view(np.uint32)
        for r0 in range(task * step, min(rows, (task + 1) * step), block):
            m = min(block, rows - r0)
            _widen_block(x, r0, m, aw)
            _norm_rows(a, b, weight, bias, eps, center)
            _narrow_block(bw, m, out, r0)


@threaded_kernel(**_OPTS)
def _add_row_norm_bf16(x, residual, skip, h, out, weight, bias, eps, center, has_skip):
    """``_add_row_norm`` on bfloat16 bits: ``h`` summed in FP32 (float64 with a skip bias)
    and rounded once to bfloat16, then the row norm of that rounded ``h``, a block of rows at
    a time. Every step writes a buffer other than the ones it reads, so each loop vectorises
    (an in-place add would take LLVM's scalar fallback)."""
    rows, n = x.shape
    block = max(1, _BLOCK_ELEMS // n)
    step = block * _BLOCKS_PER_TASK
    for task in prange((rows + step - 1) // step):
        buf = np.zeros((3, block, n), np.float32)
        a, b, c = buf[0], buf[1], buf[2]
        aw, bw, cw = a.view(np.uint32), b.view(np.uint32), c.view(np.uint32)
        for r0 in range(task * step, min(rows, (task + 1) * step), block):
            m = min(block, rows - r0)
            _widen_block(x, r0, m, aw)
            _widen_block(residual, r0, m, bw)
            _add_rows(a, b, skip, c, 0, m, has_skip)
            _narrow_block(cw, m, h, r0)
            _widen_block(h, r0, m, aw)
            _norm_rows(a, b, weight, bias, eps, center)
            _narrow_block(bw, m, out, r0)


def _via_fp32(x, out, run) -> None:
    """``run(x, out)``; for bfloat16 bits, on whole arrays widened into pooled FP32 buffers,
    the result rounded back into ``out``'s bits (for the kernels without a BF16 variant)."""
    if x.dtype != BITS:
        run(x, out)
        return
    x32 = POOL.empty(x.shape, np.float32)
    widen_bf16(x.reshape(-1, x.shape[-1]), x32.reshape(-1, x.shape[-1]))
    out32 = POOL.empty(out.shape, np.float32)
    run(x32, out32)
    narrow_bf16(out32.reshape(-1, out.shape[-1]), out.reshape(-1, out.shape[-1]))


# The entry points the layers call: FP32/FP64 arrays, or bfloat16 as its bits.
def row_norm(x, out, weight, bias, eps, center):
    kernel = _row_norm_bf16 if x.dtype == BITS else _row_norm
    kernel(x, out, weight, bias, eps, center)


def add_row_norm(x, residual, skip, h, out, weight, bias, eps, center, has_skip):
    kernel = _add_row_norm_bf16 if x.dtype == BITS else _add_row_norm
    kernel(x, residual, skip, h, out, weight, bias, eps, center, has_skip)


def grouped_norm(x, out, weight, bias, groups, spatial, eps):
    _via_fp32(x, out, lambda x, out: _grouped_norm(x, out, weight, bias, groups, spatial, eps))


def channel_affine(x, out, scale, shift):
    _via_fp32(x, out, lambda x, out: _channel_affine(x, out, scale, shift))


def linear(x, packed, bias, out):
    """The linear layers: a register-tiled, batch-invariant GEMM reading packed weights."""
    _via_fp32(x, out, lambda x, out: cpu_gemm.gemm(x, packed, bias, out))


linear_weight = cpu_gemm.pack_weight


def to_device(a: np.ndarray) -> np.ndarray:
    """Parameters live in host memory on the CPU target."""
    return a


def apply(layer, x, out=None):
    """Run a prepared layer on a NumPy array. BF16 goes to the kernels as its bits; FP16,
    which NumPy widens and rounds with SIMD, is computed in FP32 buffers."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array on device='cpu', got {type(x).__name__}")
    out = host_output(layer, x, out, POOL.empty)
    if x.size == 0:
        return out
    dt = out.dtype
    cdt = dtypes.COMPUTE[dt]
    if dt == dtypes.BFLOAT16:
        layer._run(_BACKEND, np.ascontiguousarray(x).view(BITS), out.view(BITS),
                   layer._params_for(cdt, x.shape))
        return out
    xc = x
    if dt != cdt or not x.flags["C_CONTIGUOUS"]:
        xc = POOL.empty(x.shape, cdt)
        np.copyto(xc, x, casting="unsafe")
    oc = out if dt == cdt else POOL.empty(out.shape, cdt)
    layer._run(_BACKEND, xc, oc, layer._params_for(cdt, x.shape))
    if oc is not out:
        np.copyto(out, oc, casting="unsafe")
    return out


def apply_add(layer, x, residual, out=None, residual_out=None):
    """Run a fused (residual add + norm) layer on NumPy arrays: ``(out, residual_out)``.

    FP32/FP64 and BF16 (as its bits) run the fused kernel; FP16, which Numba's CPU target
    cannot round to, sums and rounds ``h`` in NumPy and runs the unfused kernel on it (the
    same maths).
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array on device='cpu', got {type(x).__name__}")
    if not isinstance(residual, np.ndarray):
        raise TypeError("residual must be a NumPy array on device='cpu', got "
                        f"{type(residual).__name__}")
    check_residual(x, residual)
    out = host_output(layer, x, out, POOL.empty)
    residual_out = host_output(layer, x, residual_out, POOL.empty, "residual_out")
    if np.may_share_memory(out, residual_out):
        raise ValueError("out and residual_out must be different arrays")
    if x.size == 0:
        return out, residual_out
    dt = out.dtype
    cdt = dtypes.COMPUTE[dt]
    xc, rc = (np.ascontiguousarray(a) for a in (x, residual))
    if dt == dtypes.BFLOAT16:
        layer._run_add(_BACKEND, xc.view(BITS), rc.view(BITS), residual_out.view(BITS),
                       out.view(BITS), layer._params_for(cdt, x.shape))
        return out, residual_out
    if dt != cdt:
        layer.add_on_host(x, residual, residual_out)
        return apply(layer, residual_out, out), residual_out
    layer._run_add(_BACKEND, xc, rc, residual_out, out, layer._params_for(dt, x.shape))
    return out, residual_out


_BACKEND = sys.modules[__name__]  # what layers call their kernels through
