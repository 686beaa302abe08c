"""GPU benchmark: each kind's median time, GB/s and fraction of the copy bandwidth, vs PyTorch.

``normserve bench --device cuda`` calls ``main``. Times come from CUDA events around a run of
back-to-back calls (divided by their number), so Numba's per-launch Python overhead is hidden
behind the GPU work as it would be in a busy service; the same method times PyTorch. GB/s counts
the bytes a kernel must move (input read, output written, parameters read); the copy probe is
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

COPY_PROBE_BYTES = 256 << 20
TARGET_FRACTION = 0.8


@dataclass(frozen=True)
class BenchCase:
    kind: str
    shape: tuple[int, ...]
    dtype: np.dtype
    hyper: dict[str, Any]
    target: bool = False  # one of the headline cases


def bench_cases(quick: bool = False) -> list[BenchCase]:
    """The benchmark's cases; ``quick`` shrinks them for a smoke run."""
    rows, feats = (1024, 4096) if quick else (8192, 4096)
    img = (8, 256, 56, 56) if quick else (32, 256, 56, 56)
    lin = (512, 1024, 1024) if quick else (4096, 4096, 4096)
    out: list[BenchCase] = []
    for dt in (np.dtype(np.float32), np.dtype(np.float16)):
        out += [
            BenchCase("layer_norm", (rows, feats), dt, {"normalized_shape": [feats]}, True),
            BenchCase("rms_norm", (rows, feats), dt, {"normalized_shape": [feats]}, True),
            BenchCase("batch_norm", img, dt, {}),
            BenchCase("instance_norm", img, dt, {}),
            BenchCase("group_norm", img, dt, {"num_groups": 32}),
            BenchCase("weight_norm", lin[:2], dt, {"out_features": lin[2]}),
            BenchCase("spectral_norm", lin[:2], dt, {"out_features": lin[2]}),
        ]
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


def case_params(case: BenchCase, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random state-dict parameters for a case (every optional one present)."""
    c = case.shape[1] if len(case.shape) > 1 else case.shape[0]
    if case.kind in ("layer_norm", "rms_norm"):
        f = case.shape[-1]
        p = {"weight": rng.uniform(0.5, 1.5, f)}
        if case.kind == "layer_norm":
            p["bias"] = rng.uniform(-1, 1, f)
        return p
    if case.kind == "batch_norm":
        return {"running_mean": rng.uniform(-1, 1, c), "running_var": rng.uniform(0.5, 2, c),
                "weight": rng.uniform(0.5, 1.5, c), "bias": rng.uniform(-1, 1, c)}
    if case.kind in ("instance_norm", "group_norm"):
        return {"weight": rng.uniform(0.5, 1.5, c), "bias": rng.uniform(-1, 1, c)}
    n_out = case.hyper["out_features"]
    w = rng.standard_normal((n_out, case.shape[1]))
    if case.kind == "weight_norm":
        return {"weight_v": w, "weight_g": rng.uniform(0.5, 1.5, (n_out, 1)),
                "bias": rng.uniform(-1, 1, n_out)}
    v = rng.standard_normal(w.shape[1])
    u = w @ v  # torch's stored u follows W v, so sigma = u . (W v) > 0
    return {"weight_orig": w, "bias": rng.uniform(-1, 1, n_out),
            "weight_u": u / np.linalg.norm(u), "weight_v": v / np.linalg.norm(v)}


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


def _torch_fn(case: BenchCase, params: dict[str, np.ndarray], x_np: np.ndarray):
    """The PyTorch CUDA equivalent of a case, or None without torch/CUDA."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    dt = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16}[case.dtype]
    x = torch.from_numpy(x_np).to("cuda")
    t = {k: torch.from_numpy(np.asarray(v)).to("cuda", dt) for k, v in params.items()}
    if case.kind == "layer_norm":
        shape = tuple(case.hyper["normalized_shape"])
        return lambda: F.layer_norm(x, shape, t["weight"], t["bias"])
    if case.kind == "rms_norm":
        shape = tuple(case.hyper["normalized_shape"])
        return lambda: F.rms_norm(x, shape, t["weight"])
    if case.kind == "batch_norm":
        return lambda: F.batch_norm(x, t["running_mean"], t["running_var"], t["weight"],
                                    t["bias"], training=False)
    if case.kind == "instance_norm":
        return lambda: F.instance_norm(x, weight=t["weight"], bias=t["bias"])
    if case.kind == "group_norm":
        return lambda: F.group_norm(x, case.hyper["num_groups"], t["weight"], t["bias"])
    from normserve import kernels

    layer = kernels.prepare(case.kind, params)
    w = torch.from_numpy(np.ascontiguousarray(layer.weight)).to("cuda", dt)
    return lambda: F.linear(x, w, t["bias"])


def _torch_time(fn, repeat: int, inner: int) -> float:
    import torch

    return _time_ms(fn, lambda: torch.cuda.Event(enable_timing=True), torch.cuda.synchronize,
                    repeat, inner)


def run_case(case: BenchCase, copy_gbs: float, repeat: int, inner: int) -> dict[str, Any]:
    """Time one case on our kernels and on PyTorch; GB/s and fraction of the copy probe."""
    from numba import cuda

    from normserve import kernels

    rng = np.random.default_rng(0)
    params = case_params(case, rng)
    hyper = {k: v for k, v in case.hyper.items() if k != "out_features"}
    layer = kernels.prepare(case.kind, params, device="cuda", **hyper)
    x_np = rng.standard_normal(case.shape).astype(case.dtype)
    dx = cuda.to_device(x_np)
    dout = cuda.device_array(layer.output_shape(case.shape), dtype=case.dtype)
    ms = _time_ms(lambda: layer.apply(dx, dout), cuda.event, cuda.synchronize, repeat, inner)
    moved = dx.nbytes + dout.nbytes
    moved += sum(p.nbytes for p in layer._params_for(np.dtype(np.float32), case.shape).values())
    gbs = moved / (ms * 1e-3) / 1e9
    row: dict[str, Any] = {"kind": case.kind, "shape": "x".join(map(str, case.shape)),
                           "dtype": case.dtype.name, "ms": ms, "GB/s": gbs,
                           "copy": gbs / copy_gbs, "torch_ms": None, "speedup": None,
                           "target": case.target}
    if case.kind in ("weight_norm", "spectral_norm"):
        k, n_out = case.shape[1], case.hyper["out_features"]
        row["TFLOP/s"] = 2 * case.shape[0] * k * n_out / (ms * 1e-3) / 1e12
    fn = _torch_fn(case, params, x_np)
    if fn is not None:
        row["torch_ms"] = _torch_time(fn, repeat, inner)
        row["speedup"] = row["torch_ms"] / ms
    return row


def format_table(rows: Sequence[dict[str, Any]], copy_gbs: float, device: str) -> str:
    lines = [f"device: {device}; device-to-device copy: {copy_gbs:.0f} GB/s",
             f"{'kind':<14}{'shape':<18}{'dtype':<9}{'ms':>9}{'GB/s':>9}{'%copy':>7}"
             f"{'torch ms':>10}{'vs torch':>9}  note"]
    for r in rows:
        torch_ms = "-" if r["torch_ms"] is None else f"{r['torch_ms']:.3f}"
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        note = f"{r['TFLOP/s']:.1f} TFLOP/s" if "TFLOP/s" in r else ""
        if r["target"]:
            ok = r["copy"] >= TARGET_FRACTION and (r["speedup"] is None or r["speedup"] >= 1.0)
            note = "target met" if ok else "target MISSED"
        lines.append(f"{r['kind']:<14}{r['shape']:<18}{r['dtype']:<9}{r['ms']:>9.3f}"
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
