"""A register-tiled GEMM micro-kernel for the linear layers, written in LLVM IR.

Numba has no SIMD types, and its arrays carry no aliasing facts, so a plain loop nest keeps
its accumulators in memory and runs at a third of BLAS's speed. This intrinsic holds a tile
of ``TILE_ROWS x TILE_COLS`` outputs in vector registers, sized from the host's vector width
(as BLIS and oneDNN pick their micro-kernels), and streams a packed weight panel through
them, a cache-sized block of k at a time.

Batch invariance is by construction: every output element is one chain of fused
multiply-adds over ``k = 0, 1, ...`` in order, whichever tile slot its row lands in (a chain
paused between k blocks is kept in its own dtype, so pausing rounds nothing), and a short
last tile repeats its last row in the spare slots (computed, never written out). BLAS, by
contrast, changes its blocking, and with it the rounding, with the batch size.
"""

from __future__ import annotations

import llvmlite.binding as ll
import numpy as np
from llvmlite import ir
from numba import config, prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from .cpu_jit import threaded_kernel


def _host_vector_bytes() -> int:
    """The widest vector registers the kernels are compiled for: 64 bytes where AVX-512F is
    available (32 registers), else 32 (AVX2's 16; narrower machines split the vectors)."""
    features = config.CPU_FEATURES
    if features is None and config.CPU_NAME in (None, "host"):
        return 64 if ll.get_host_cpu_features().get("avx512f") else 32
    return 64 if "+avx512f" in (features or "") else 32


_VECTOR_BYTES = _host_vector_bytes()
#: Output columns per tile and per packed weight panel: two FP32 vectors.
TILE_COLS = _VECTOR_BYTES // 2
#: Rows per tile, by itemsize: enough independent accumulators (rows x TILE_COLS / lanes) to
#: cover the FMA latency on every FMA port, leaving registers for the panel and a broadcast:
#: 24 of 32 registers with AVX-512 (as BLIS's and oneDNN's AVX-512 micro-kernels), 12 of 16
#: with AVX2.
TILE_ROWS = {4: 12, 8: 6} if _VECTOR_BYTES == 64 else {4: 6, 8: 3}
_ROWS_F32, _ROWS_F64 = TILE_ROWS[4], TILE_ROWS[8]


def pack_weight(weight: np.ndarray, row_scale: np.ndarray | None = None,
                dtype: np.dtype | None = None) -> np.ndarray:
    """(out, in) weight -> (tiles, in, TILE_COLS) panels of ``dtype``, zero-padded, each
    streaming contiguously. With ``row_scale``, row ``o`` is ``weight[o] * row_scale[o]``
    formed in float64 and rounded once, in the same pass: a weight-normalised layer packs its
    direction matrix as given, without a float64 copy of the weight (one-shot calls pay this)."""
    n_out, k_in = weight.shape
    if row_scale is None:
        row_scale = np.ones(n_out)
    packed = np.empty((-(-n_out // TILE_COLS), k_in, TILE_COLS),
                      dtype=weight.dtype if dtype is None else dtype)
    _pack(np.ascontiguousarray(weight), np.ascontiguousarray(row_scale, np.float64), packed)
    return packed


_PACK_K = 8  # k per transposed block: 32 rows x 8 read, 8 rows x 32 written (2-3x faster)


@threaded_kernel(nogil=True, cache=True)
def _pack(weight, row_scale, packed):
    """One panel per thread step, transposed through a small block that stays in L1."""
    n_out, k_in = weight.shape
    for t in prange(packed.shape[0]):
        panel = packed[t]
        block = np.zeros((TILE_COLS, _PACK_K), packed.dtype)  # rows past n_out stay zero
        first = t * TILE_COLS
        for k0 in range(0, k_in, _PACK_K):
            kn = min(_PACK_K, k_in - k0)
            for c in range(min(TILE_COLS, n_out - first)):
                s = row_scale[first + c]
                for k in range(kn):
                    block[c, k] = weight[first + c, k0 + k] * s
            for k in range(kn):
                dst = panel[k0 + k]
                for c in range(TILE_COLS):
                    dst[c] = block[c, k]


@intrinsic
def _tile(typingctx, x_t, rows_t, r0_t, panel_t, k0_t, k1_t, acc_t, a0_t):
    """``acc[a0:a0+R] (+)= x[r0:r0+R, k0:k1] @ panel[k0:k1]``: one tile's FMA chains carried
    through the k range ``[k0, k1)``, started from zero when ``k0`` is 0, else from ``acc``.

    ``acc`` is FP32 for FP32 data, as the registers: stopping a chain there and going on
    later rounds nothing, so splitting k into cache-sized blocks changes no bit."""
    for name, ty in (("x", x_t), ("panel", panel_t), ("acc", acc_t)):
        if not isinstance(ty, types.Array) or ty.layout != "C" or ty.ndim != 2:
            raise TypingError(f"{name} must be a 2-D C-contiguous array")
    if x_t.dtype not in (types.float32, types.float64) or not (
            panel_t.dtype == acc_t.dtype == x_t.dtype):
        raise TypingError("x, panel and acc must share a float32 or float64 dtype")
    sig = types.void(x_t, rows_t, r0_t, panel_t, k0_t, k1_t, acc_t, a0_t)

    def codegen(context, builder, sig, args):
        x, rows, r0, panel, k0, k1, acc_arr, a0 = args
        xa = context.make_array(sig.args[0])(context, builder, x)
        pa = context.make_array(sig.args[3])(context, builder, panel)
        aa = context.make_array(sig.args[6])(context, builder, acc_arr)
        scalar = context.get_value_type(sig.args[0].dtype)
        lanes = _VECTOR_BYTES // context.get_abi_sizeof(scalar)
        n_rows = TILE_ROWS[context.get_abi_sizeof(scalar)]
        vec = ir.VectorType(scalar, lanes)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]),
            f"llvm.fma.v{lanes}{'f32' if scalar == ir.FloatType() else 'f64'}")
        k_in = builder.extract_value(xa.shape, 1)
        last = builder.sub(rows, ir.Constant(i64, 1))
        parts = TILE_COLS // lanes
        # A short last tile repeats the last row in its spare slots (never written out).
        x_rows, slots = [], []
        fresh = builder.icmp_signed("==", k0, ir.Constant(i64, 0))
        zero = ir.Constant(vec, [0.0] * lanes)
        for r in range(n_rows):
            i = builder.add(r0, ir.Constant(i64, r))
            i = builder.select(builder.icmp_signed("<", i, rows), i, last)
            x_rows.append(builder.gep(xa.data, [builder.mul(i, k_in)]))
            slot = builder.gep(aa.data, [builder.mul(builder.add(a0, ir.Constant(i64, r)),
                                                     ir.Constant(i64, TILE_COLS))])
            slots.append([builder.bitcast(builder.gep(slot, [ir.Constant(i64, h * lanes)]),
                                          vec.as_pointer()) for h in range(parts)])
        acc = [[cgutils.alloca_once_value(
                    builder, builder.select(fresh, zero, builder.load(slots[r][h], align=4)))
                for h in range(parts)] for r in range(n_rows)]
        undef = ir.Constant(vec, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        with cgutils.for_range_slice(builder, k0, k1, ir.Constant(i64, 1)) as (k, _):
            row = builder.gep(pa.data, [builder.mul(k, ir.Constant(i64, TILE_COLS))])
            w = [builder.load(builder.bitcast(builder.gep(row, [ir.Constant(i64, h * lanes)]),
                                              vec.as_pointer()), align=4)
                 for h in range(parts)]
            for r in range(n_rows):
                xk = builder.load(builder.gep(x_rows[r], [k]))
                xb = builder.shuffle_vector(
                    builder.insert_element(undef, xk, ir.Constant(i32, 0)), undef, splat)
                for h in range(parts):
                    builder.store(builder.call(fma, [xb, w[h], builder.load(acc[r][h])]),
                                  acc[r][h])
        for r in range(n_rows):
            for h in range(parts):
                builder.store(builder.load(acc[r][h]), slots[r][h], align=4)
        return context.get_dummy_value()

    return sig, codegen


#: k per block: a block of a weight panel (K_BLOCK x TILE_COLS) stays in the L1 cache while
#: every row tile of a row block runs through it.
K_BLOCK = 8192 // TILE_COLS
#: Rows per block. Each row block streams the whole packed weight once: a weight that stays in
#: the last-level cache costs little to re-read, so short blocks keep the rows' inputs in L2;
#: a weight larger than that comes from DRAM each time, so long blocks read it fewer times
#: (256x4096 @ 4096x4096, 64 MB of weight: 67 -> 47 ms on one thread, measured).
ROW_BLOCK, LONG_ROW_BLOCK = 4 * _ROWS_F32, 22 * _ROWS_F32
CACHED_WEIGHT_BYTES = 8 << 20


def gemm(x, packed, bias, out) -> None:
    """``out = x @ W.T + bias`` from ``packed = pack_weight(W)``. The row blocking changes
    no result: every output is the same chain of FMAs whatever block it is computed in."""
    long = packed.nbytes > CACHED_WEIGHT_BYTES
    _gemm(x, packed, bias, out, LONG_ROW_BLOCK if long else ROW_BLOCK)


@threaded_kernel(work=lambda x, packed, *_: x.size * packed.shape[0] * TILE_COLS,
                 nogil=True, cache=True)
def _gemm(x, packed, bias, out, row_block):
    """Row blocks x column tiles split across threads, each reducing k in cache-sized
    blocks."""
    rows, k_in = x.shape
    n_out = out.shape[1]
    tiles = packed.shape[0]
    step = _ROWS_F32 if x.itemsize == 4 else _ROWS_F64
    row_blocks = (rows + row_block - 1) // row_block
    for t in prange(row_blocks * tiles):
        rb = t // tiles
        ct = t % tiles
        lo = rb * row_block
        hi = min(lo + row_block, rows)
        acc = np.empty((row_block, TILE_COLS), x.dtype)
        for k0 in range(0, k_in, K_BLOCK):
            k1 = min(k0 + K_BLOCK, k_in)
            for r0 in range(lo, hi, step):
                _tile(x, rows, r0, packed[ct], k0, k1, acc, r0 - lo)
        c0 = ct * TILE_COLS
        for r in range(lo, hi):
            for c in range(min(TILE_COLS, n_out - c0)):
                out[r, c0 + c] = acc[r - lo, c] + bias[c0 + c]
