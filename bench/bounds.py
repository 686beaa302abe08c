"""The memory bound of the fused residual norms, measured (``python -m normserve.bench.bounds``).

Issue 21 asks the fused kinds for 0.8 of the copy bandwidth, counting x and residual read, y
and h written. A copy moves one stream in and one out; the fused op moves two of each, and
each written stream also costs its read for ownership. What that access pattern itself can
reach on this machine is measured here by a kernel that moves exactly those bytes and does no
maths (``h = x + residual; y = h``), compiled as the kernels are and timed interleaved with the
fused kernel, from DRAM (the cache flushed before each call). The fused kernel's time over the
stream kernel's is then the part of the bound it reaches.
"""

from __future__ import annotations

import argparse
import random
import statistics
from collections.abc import Callable

import numba
import numpy as np
from numba import prange

from normserve.bench.kernels import FLUSH_BYTES, _parallel_copy, _time
from normserve.bench.machine import describe
from normserve.kernels import prepare
from normserve.kernels.cpu_jit import jit

SHAPES = ((8192, 1024), (256, 4096))


@jit(parallel=True, nogil=True, cache=True)
def _add_copy(x, residual, h, y):
    """The fused kinds' traffic without their maths: two rows read, two written."""
    for r in prange(x.shape[0]):
        src, res, dh, dy = x[r], residual[r], h[r], y[r]
        for j in range(src.shape[0]):
            v = src[j] + res[j]
            dh[j] = v
            dy[j] = v


def measure(shape: tuple[int, int], threads: int, reps: int) -> list[tuple[str, float]]:
    """(implementation, median seconds) for one shape, interleaved in a new order each rep."""
    numba.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x, r = (rng.standard_normal(shape).astype(np.float32) for _ in range(2))
    h, y = np.empty_like(x), np.empty_like(x)
    n = shape[1]
    rms = prepare("add_rms_norm", {"weight": rng.uniform(0.5, 2, n)}, normalized_shape=[n])
    ln = prepare("add_layer_norm", {"weight": rng.uniform(0.5, 2, n),
                                    "bias": rng.uniform(-1, 1, n)}, normalized_shape=[n])
    src = np.ones(64 << 20, np.float32)
    dst = np.empty_like(src)
    copy = ((lambda: np.copyto(dst, src)) if threads == 1
            else (lambda: _parallel_copy(src, dst)))
    impls: dict[str, Callable[[], object]] = {
        "copy (256 MiB)": copy,
        "stream bound: h = x + r; y = h": lambda: _add_copy(x, r, h, y),
        "add_rms_norm out=": lambda: rms.apply(x, r, y, h),
        "add_layer_norm out=": lambda: ln.apply(x, r, y, h),
    }
    flush = np.zeros(FLUSH_BYTES // 8)
    for fn in impls.values():
        fn()
        fn()
    samples: dict[str, list[float]] = {k: [] for k in impls}
    order = random.Random(0)
    for _ in range(reps):
        names = list(impls)
        order.shuffle(names)
        for name in names:
            samples[name].append(_time(impls[name], flush))
    return [(k, statistics.median(v)) for k, v in samples.items()]


def table(shape: tuple[int, int], threads: int, timings: list[tuple[str, float]]) -> str:
    fused_bytes = 4 * shape[0] * shape[1] * 4
    copy_s = timings[0][1]
    copy_bw = 2 * (64 << 20) * 4 / copy_s
    stream_s = timings[1][1]
    lines = []
    for name, t in timings:
        moved = 2 * (64 << 20) * 4 if name.startswith("copy") else fused_bytes
        bw = moved / t
        of_stream = "" if name.startswith("copy") else f"{stream_s / t:.2f}"
        lines.append(f"| {shape[0]}x{shape[1]} | {threads} | {name} | {t * 1e3:.2f} | "
                     f"{bw / 1e9:.1f} | {bw / copy_bw:.2f} | {of_stream} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m normserve.bench.bounds", description=__doc__)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    print(f"# fused-norm memory bound: {describe()}; FP32, cache flushed before each call")
    print("| shape | threads | impl | median ms | GB/s | of copy BW | of stream bound |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for threads in args.threads:
        for shape in SHAPES:
            print(table(shape, threads, measure(shape, threads, args.reps)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
