"""GPU benchmark: each kind's median time, GB/s and fraction of the copy bandwidth, vs PyTorch.

``normserve bench --device cuda`` calls ``main``. Times come from CUDA events around a run of
back-to-back calls (divided by their number), so Numba's per-launch Python overhead is hidden
behind the GPU work as it would be in a busy service; the same method times PyTorch. GB/s counts
the bytes a kernel must move (inputs read, outputs written, parameters read: a fused norm
reads x and residual and writes y and h); the copy probe is
a device-to-device memcpy of 256 MiB, counted as read plus write the same way.

Target (issue 5): layer norm and RMSNorm on 8192x4096, FP32 and FP16, at >= 80% of the copy
bandwidth and >= 1.0x PyTorch CUDA.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from normserve.kernels.kinds import Example, Sizes, kinds

COPY_PROBE_BYTES = 256 << 20
TARGET_FRACTION = 0.8


#: The issue's headline kinds, whose rows say whether the target is met.
TARGETS = frozenset({"layer_norm", "rms_norm"})


@dataclass(frozen=True)
class BenchCase:
    kind: str
    sizes: Sizes
    dtype: np.dtype
    target: bool = False  # one of the headline cases

    def example(self, rng: np.random.Generator) -> Example:
        """The case's layer (every optional parameter present) and its per-sample shape."""
        return kinds()[self.kind].example(rng, self.sizes, True)


def bench_cases(quick: bool = False) -> list[BenchCase]:
    """Each kind at the GPU benchmark shape its declaration names; ``quick`` shrinks them for
    a smoke run."""
    out: list[BenchCase] = []
    for dt in (np.dtype(np.float32), np.dtype(np.float16)):
        for kind in kinds().values():
            sizes = kind.benchmarks.cuda_quick if quick else kind.benchmarks.cuda
            if sizes is not None:
                out.append(BenchCase(kind.name, sizes, dt, kind.name in TARGETS))
    return out


def gpu_unavailable() -> str | None:
    """Why the GPU benchmark cannot run here, or None when it can."""
    try:
        from numba import cuda
        from numba.core import config
    except ImportError:
        return "numba-cuda is not installed (pip install 'normserve[cuda]'); no GPU to benchmark"
    if config.ENABLE_CUDASIM:
        return ("the CUDA simulator is enabled (NUMBA_ENABLE_CUDASIM=1): it has no GPU timings; "
                "run on a machine with an NVIDIA GPU")
    try:
        available = cuda.is_available()
    except Exception as exc:  # a broken driver is "no GPU", said plainly
        return f"no usable CUDA GPU ({exc})"
    return None if available else "no CUDA GPU is available (numba.cuda.is_available() is False)"


def _time_ms(fn: Callable[[], Any], event: Callable[[], Any], sync: Callable[[], None],
             repeat: int, inner: int) -> float:
    """Median over ``repeat`` samples of the per-call time of ``inner`` back-to-back calls."""
    for _ in range(3):
        fn()
    sync()
    samples = []
    for _ in range(repeat):
        start, stop = event(), event()
        start.record()
        for _ in range(inner):
            fn()
        stop.record()
        stop.synchronize()
        samples.append(_elapsed(start, stop) / inner)
    return statistics.median(samples)


def _elapsed(start: Any, stop: Any) -> float:
    if hasattr(start, "elapsed_time"):  # torch.cuda.Event
        return float(start.elapsed_time(stop))
    from numba import cuda

    return float(cuda.event_elapsed_time(start, stop))


def copy_bandwidth(repeat: int = 20) -> float:
    """GB/s of a device-to-device copy (bytes read + written), the roofline of these kernels."""
    from numba import cuda

    src = cuda.device_array(COPY_PROBE_BYTES, dtype=np.uint8)
    dst = cuda.device_array(COPY_PROBE_BYTES, dtype=np.uint8)
    ms = _time_ms(lambda: dst.copy_to_device(src), cuda.event, cuda.synchronize, repeat, 5)
    return 2 * COPY_PROBE_BYTES / (ms * 1e-3) / 1e9


def _torch_fn(case: BenchCase, layer: Any, params: dict[str, np.ndarray],
              xs_np: Sequence[np.ndarray]):
    """The kind's torch call on CUDA tensors (a tuple of them for a kind of several inputs),
    or None without torch/CUDA."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dt = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}[case.dtype]
    xs = tuple(torch.from_numpy(x).to("cuda") for x in xs_np)
    x = xs[0] if len(xs) == 1 else xs
    t = {k: torch.from_numpy(np.asarray(v)).to("cuda", dt) for k, v in params.items()}
    return kinds()[case.kind].torch_peer(layer, x, t)


def _torch_time(fn, repeat: int, inner: int) -> float:
    import torch

    return _time_ms(fn, lambda: torch.cuda.Event(enable_timing=True), torch.cuda.synchronize,
                    repeat, inner)


def run_case(case: BenchCase, copy_gbs: float, repeat: int, inner: int) -> dict[str, Any]:
    """Time one case on our kernels and on PyTorch; GB/s and fraction of the copy probe."""
    from numba import cuda

    from normserve import kernels

    rng = np.random.default_rng(0)
    example = case.example(rng)
    shape = example.shape(case.sizes.batch)
    layer = kernels.prepare(case.kind, example.params, device="cuda", **example.hyper)
    xs_np = [rng.standard_normal(shape).astype(case.dtype) for _ in layer.input_names]
    dxs = [cuda.to_device(x) for x in xs_np]
    douts = [cuda.device_array(layer.output_shape(shape), dtype=case.dtype)
             for _ in layer.output_names]
    ms = _time_ms(lambda: layer.apply_all(dxs, douts), cuda.event, cuda.synchronize, repeat,
                  inner)
    moved = sum(a.nbytes for a in (*dxs, *douts))
    moved += sum(p.nbytes for p in layer._params_for(np.dtype(np.float32), shape).values())
    gbs = moved / (ms * 1e-3) / 1e9
    row: dict[str, Any] = {"kind": case.kind, "shape": "x".join(map(str, shape)),
                           "dtype": case.dtype.name, "ms": ms, "GB/s": gbs,
                           "copy": gbs / copy_gbs, "torch_ms": None, "speedup": None,
                           "target": case.target}
    if kinds()[case.kind].benchmarks.gemm:
        row["TFLOP/s"] = 2 * layer.work(shape) / (ms * 1e-3) / 1e12
    fn = _torch_fn(case, layer, example.params, xs_np)
    if fn is not None:
        row["torch_ms"] = _torch_time(fn, repeat, inner)
        row["speedup"] = row["torch_ms"] / ms
    return row


def format_table(rows: Sequence[dict[str, Any]], copy_gbs: float, device: str) -> str:
    lines = [f"device: {device}; device-to-device copy: {copy_gbs:.0f} GB/s",
             f"{'kind':<16}{'shape':<18}{'dtype':<9}{'ms':>9}{'GB/s':>9}{'%copy':>7}"
             f"{'torch ms':>10}{'vs torch':>9}  note"]
    for r in rows:
        torch_ms = "-" if r["torch_ms"] is None else f"{r['torch_ms']:.3f}"
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        note = f"{r['TFLOP/s']:.1f} TFLOP/s" if "TFLOP/s" in r else ""
        if r["target"]:
            ok = r["copy"] >= TARGET_FRACTION and (r["speedup"] is None or r["speedup"] >= 1.0)
            note = "target met" if ok else "target MISSED"
        lines.append(f"{r['kind']:<16}{r['shape']:<18}{r['dtype']:<9}{r['ms']:>9.3f}"
                     f"{r['GB/s']:>9.0f}{100 * r['copy']:>6.0f}%{torch_ms:>10}{speed:>9}  {note}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the GPU benchmark and print its table; 2 (with the reason) when there is no GPU."""
    parser = argparse.ArgumentParser(prog="normserve bench --device cuda", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", nargs="*", help="only these kinds (default: all)")
    parser.add_argument("--repeat", type=int, default=20, help="timed samples per case")
    parser.add_argument("--inner", type=int, default=10, help="back-to-back calls per sample")
    parser.add_argument("--quick", action="store_true", help="smaller shapes")
    args = parser.parse_args(list(argv) if argv is not None else None)
    reason = gpu_unavailable()
    if reason is not None:
        print(f"GPU benchmark unavailable: {reason}", file=sys.stderr)
        return 2
    from numba import cuda

    cases = [c for c in bench_cases(args.quick) if not args.kinds or c.kind in args.kinds]
    copy_gbs = copy_bandwidth()
    rows = [run_case(c, copy_gbs, args.repeat, args.inner) for c in cases]
    name = cuda.get_current_device().name
    print(format_table(rows, copy_gbs, name.decode() if isinstance(name, bytes) else str(name)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
