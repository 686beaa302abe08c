"""A register-tiled GEMM micro-kernel for the linear layers, written in LLVM IR.

Numba has no SIMD types, and its arrays carry no aliasing facts, so a plain loop nest keeps
its accumulators in memory and runs at a third of BLAS's speed. This intrinsic holds a tile
of ``rows x 16`` outputs in vector registers and streams a packed weight panel through them,
which gets within reach of OpenBLAS.

Batch invariance is by construction: every output element is one chain of fused
multiply-adds over ``k = 0, 1, ...`` in order, whichever tile slot its row lands in, and a
short last tile repeats its last row in the spare slots (computed, never stored). BLAS, by
contrast, changes its blocking, and with it the rounding, with the batch size.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from .cpu_jit import threaded_kernel

#: Output columns per tile and per packed weight panel.
TILE_COLS = 16
_VECTOR_BYTES = 32  # AVX2 registers; wider machines still run it, narrower ones split it


def _tile_rows(itemsize: int) -> int:
    """Rows per tile: 4 for FP32 (8 accumulators of 8 lanes), 2 for FP64 (8 of 4 lanes)."""
    return 4 if itemsize == 4 else 2


def pack_weight(weight: np.ndarray) -> np.ndarray:
    """(out, in) weight -> (tiles, in, 16) panels, zero-padded: each panel streams contiguously."""
    n_out, k_in = weight.shape
    tiles = -(-n_out // TILE_COLS)
    packed = np.zeros((tiles, k_in, TILE_COLS), dtype=weight.dtype)
    for t in range(tiles):
        block = weight[t * TILE_COLS : (t + 1) * TILE_COLS]
        packed[t, :, : block.shape[0]] = block.T
    return packed


@intrinsic
def _tile(typingctx, x_t, rows_t, r0_t, panel_t, bias_t, out_t, c0_t):
    """``out[r0:r0+R, c0:c0+16] = x[r0:r0+R] @ panel + bias[c0:c0+16]`` (valid part only)."""
    for name, ty in (("x", x_t), ("panel", panel_t), ("out", out_t)):
        if not isinstance(ty, types.Array) or ty.layout != "C" or ty.ndim != 2:
            raise TypingError(f"{name} must be a 2-D C-contiguous array")
    if x_t.dtype not in (types.float32, types.float64) or panel_t.dtype != x_t.dtype:
        raise TypingError("x and panel must share a float32 or float64 dtype")
    sig = types.void(x_t, rows_t, r0_t, panel_t, bias_t, out_t, c0_t)

    def codegen(context, builder, sig, args):
        x, rows, r0, panel, bias, out, c0 = args
        xa = context.make_array(sig.args[0])(context, builder, x)
        pa = context.make_array(sig.args[3])(context, builder, panel)
        ba = context.make_array(sig.args[4])(context, builder, bias)
        oa = context.make_array(sig.args[5])(context, builder, out)
        scalar = context.get_value_type(sig.args[0].dtype)
        lanes = _VECTOR_BYTES // context.get_abi_sizeof(scalar)
        n_rows = _tile_rows(context.get_abi_sizeof(scalar))
        vec = ir.VectorType(scalar, lanes)
        i32, i64 = ir.IntType(32), ir.IntType(64)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vec, [vec, vec, vec]),
            f"llvm.fma.v{lanes}{'f32' if lanes == 8 else 'f64'}")
        k_in = builder.extract_value(xa.shape, 1)
        n_out = builder.extract_value(oa.shape, 1)
        last = builder.sub(rows, ir.Constant(i64, 1))
        x_rows = []
        for r in range(n_rows):
            i = builder.add(r0, ir.Constant(i64, r))
            i = builder.select(builder.icmp_signed("<", i, rows), i, last)
            x_rows.append(builder.gep(xa.data, [builder.mul(i, k_in)]))
        halves = TILE_COLS // lanes
        acc = [[cgutils.alloca_once_value(builder, ir.Constant(vec, [0.0] * lanes))
                for _ in range(halves)] for _ in range(n_rows)]
        undef = ir.Constant(vec, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
        with cgutils.for_range(builder, k_in) as loop:
            k = loop.index
            row = builder.gep(pa.data, [builder.mul(k, ir.Constant(i64, TILE_COLS))])
            w = [builder.load(builder.bitcast(builder.gep(row, [ir.Constant(i64, h * lanes)]),
                                              vec.as_pointer()), align=4)
                 for h in range(halves)]
            for r in range(n_rows):
                xk = builder.load(builder.gep(x_rows[r], [k]))
                xb = builder.shuffle_vector(
                    builder.insert_element(undef, xk, ir.Constant(i32, 0)), undef, splat)
                for h in range(halves):
                    builder.store(builder.call(fma, [xb, w[h], builder.load(acc[r][h])]),
                                  acc[r][h])
        for r in range(n_rows):
            i = builder.add(r0, ir.Constant(i64, r))
            with builder.if_then(builder.icmp_signed("<", i, rows)):
                dst = builder.gep(oa.data, [builder.mul(i, n_out)])
                for h in range(halves):
                    a = builder.load(acc[r][h])
                    for lane in range(lanes):
                        c = builder.add(c0, ir.Constant(i64, h * lanes + lane))
                        with builder.if_then(builder.icmp_signed("<", c, n_out)):
                            b = builder.load(builder.gep(ba.data, [c]))
                            v = builder.extract_element(a, ir.Constant(i32, lane))
                            builder.store(builder.fadd(v, b), builder.gep(dst, [c]))
        return context.get_dummy_value()

    return sig, codegen


_ROW_BLOCK = 64  # rows kept in cache while the weight panels stream past


@threaded_kernel(work=lambda x, packed, *_: x.size * packed.shape[0] * TILE_COLS,
                 nogil=True, cache=True)
def gemm(x, packed, bias, out):
    """``out = x @ W.T + bias`` from ``packed = pack_weight(W)``; rows split across threads."""
    rows = x.shape[0]
    tiles = packed.shape[0]
    step = 4 if x.itemsize == 4 else 2
    row_blocks = (rows + _ROW_BLOCK - 1) // _ROW_BLOCK
    for t in prange(row_blocks * tiles):
        rb = t // tiles
        ct = t % tiles
        for r0 in range(rb * _ROW_BLOCK, min(rb * _ROW_BLOCK + _ROW_BLOCK, rows), step):
            _tile(x, rows, r0, packed[ct], bias, out, ct * TILE_COLS)
