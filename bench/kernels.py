"""``normserve bench``: the CPU kernels against NumPy, PyTorch and ONNX Runtime, interleaved.

Every case runs each implementation in one process, in a shuffled order each repetition,
with the last-level cache flushed before every timed call (inputs come from DRAM, as they
do in a server). It reports medians, effective bandwidth (bytes read + written), the fraction
of a same-thread-count copy's bandwidth, and the ratio to the fastest peer. Three ways of
calling the project's kernels are timed: the one-shot functional call (``kernels.layer_norm(x,
...)``, SPEC section 2: a layer built, applied and dropped per call), a prepared layer
allocating its output, and a prepared layer writing into ``out=``.

Two modes: ``back-to-back`` times each call right after the flush; ``idle`` also sleeps
``--idle-ms`` first, so that every thread pool (Numba's, PyTorch's OpenMP, ONNX Runtime's,
BLAS's) has stopped spinning and parked its threads, as in a service handling sporadic
requests, and each call pays for waking its pool.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
from numba import prange

from normserve.kernels import PreparedLayer, prepare
from normserve.kernels.cpu_jit import jit
from normserve.kernels.functional import BY_KIND

FLUSH_BYTES = 256 << 20
MODES = ("back-to-back", "idle")
#: The project's own columns, in table order; every other implementation is a peer.
OURS = ("normserve one-shot", "normserve prepared", "normserve out=")


@dataclass
class Case:
    """One benchmark shape: the layer, its input, and the peers' equivalents."""

    name: str
    layer: PreparedLayer
    x: np.ndarray
    peers: dict[str, Callable[[], Any]] = field(default_factory=dict)
    flops: float = 0.0
    out: np.ndarray | None = None  # what the ``out=`` column writes into

    @property
    def bytes(self) -> int:
        out = int(np.prod(self.layer.output_shape(self.x.shape))) * self.x.itemsize
        params = sum(v.nbytes for v in self.layer.params.values() if v is not None) // 2
        return self.x.nbytes + out + params  # params as FP32


@jit(parallel=True, nogil=True, cache=True)
def _parallel_copy(src, dst):
    n = src.shape[0]
    chunk = 1 << 16
    for c in prange((n + chunk - 1) // chunk):
        lo = c * chunk
        hi = min(lo + chunk, n)
        dst[lo:hi] = src[lo:hi]


def _rng() -> np.random.Generator:
    return np.random.default_rng(0)


def _layer_cases() -> list[tuple[str, str, dict, dict, tuple[int, ...]]]:
    """(name, kind, params, hyper, input shape) of the shapes the issue asks for."""
    r = _rng()
    cases = []
    for rows, n in ((8192, 1024), (256, 4096), (65536, 128)):
        cases.append((f"layer_norm {rows}x{n}", "layer_norm",
                      {"weight": r.uniform(0.5, 1.5, n), "bias": r.uniform(-1, 1, n)},
                      {"normalized_shape": [n]}, (rows, n)))
        cases.append((f"rms_norm {rows}x{n}", "rms_norm", {"weight": r.uniform(0.5, 1.5, n)},
                      {"normalized_shape": [n], "eps": 1e-6}, (rows, n)))
    c = 256
    cases.append(("batch_norm 64x256x28x28", "batch_norm",
                  {"running_mean": r.standard_normal(c), "running_var": r.uniform(0.5, 2, c),
                   "weight": r.uniform(0.5, 1.5, c), "bias": r.standard_normal(c)},
                  {}, (64, c, 28, 28)))
    affine = {"weight": r.uniform(0.5, 1.5, c), "bias": r.standard_normal(c)}
    cases.append(("group_norm(32) 32x256x28x28", "group_norm", affine, {"num_groups": 32},
                  (32, c, 28, 28)))
    cases.append(("instance_norm 32x256x28x28", "instance_norm", affine, {}, (32, c, 28, 28)))
    v = r.standard_normal((1024, 1024))
    cases.append(("weight_norm 4096x1024 @ 1024x1024", "weight_norm",
                  {"weight_v": v, "weight_g": r.uniform(0.5, 2, (1024, 1)),
                   "bias": r.standard_normal(1024)}, {}, (4096, 1024)))
    return cases


def _numpy_peer(layer: PreparedLayer, x: np.ndarray) -> Callable[[], Any]:
    """The same maths in vectorised FP32 NumPy (two-pass statistics)."""
    p = {k: None if v is None else v.astype(np.float32) for k, v in layer.params.items()}
    kind = layer.kind
    if kind in ("layer_norm", "rms_norm"):
        eps = np.float32(layer.eps_for(x.dtype))

        def run():
            if kind == "layer_norm":
                d = x - x.mean(axis=-1, keepdims=True)
                y = d / np.sqrt((d * d).mean(axis=-1, keepdims=True) + eps)
                return y * p["weight"] + p["bias"]
            return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * p["weight"]

        return run
    if kind == "batch_norm":
        scale, shift = p["scale"][:, None, None], p["shift"][:, None, None]
        return lambda: x * scale + shift
    if kind in ("group_norm", "instance_norm"):
        n, c = x.shape[:2]
        g = c if kind == "instance_norm" else layer.num_groups
        w, b = p["weight"][:, None, None], p["bias"][:, None, None]

        def run():
            xg = x.reshape(n, g, -1)
            d = xg - xg.mean(axis=-1, keepdims=True)
            y = d / np.sqrt((d * d).mean(axis=-1, keepdims=True) + np.float32(layer.eps))
            return y.reshape(x.shape) * w + b

        return run
    wt = np.ascontiguousarray(p["weight"].T)
    return lambda: x @ wt + p["bias"]


def _torch_peer(layer: PreparedLayer, x: np.ndarray, params: dict) -> Callable[[], Any] | None:
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return None
    t = torch.from_numpy(x)
    tp = {k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in params.items()}
    kind = layer.kind
    if kind == "layer_norm":
        return lambda: F.layer_norm(t, layer.normalized_shape, tp["weight"], tp["bias"], layer.eps)
    if kind == "rms_norm":
        return lambda: F.rms_norm(t, layer.normalized_shape, tp["weight"], layer.eps)
    if kind == "batch_norm":
        return lambda: F.batch_norm(t, tp["running_mean"], tp["running_var"], tp["weight"],
                                    tp["bias"], False, 0.0, layer.eps)
    if kind == "group_norm":
        return lambda: F.group_norm(t, layer.num_groups, tp["weight"], tp["bias"], layer.eps)
    if kind == "instance_norm":
        return lambda: F.instance_norm(t, None, None, tp["weight"], tp["bias"], True, 0.0,
                                       layer.eps)
    w = torch.from_numpy(layer.params["weight"].astype(np.float32))
    return lambda: F.linear(t, w, tp["bias"])


def _ort_peer(layer: PreparedLayer, x: np.ndarray, params: dict,
              threads: int) -> Callable[[], Any] | None:
    """A one-node ONNX graph with the standard operator, run through IOBinding."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    kind = layer.kind
    f32 = {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}
    inits, inputs, attrs, opset = [], ["input"], {}, 21
    if kind == "layer_norm":
        op, names, attrs = "LayerNormalization", ["weight", "bias"], {"axis": -1, "epsilon": 1e-5}
    elif kind == "rms_norm":
        op, names, opset = "RMSNormalization", ["weight"], 23
        attrs = {"axis": -1, "epsilon": layer.eps_for(x.dtype)}
    elif kind == "batch_norm":
        op, attrs = "BatchNormalization", {"epsilon": layer.eps}
        names = ["weight", "bias", "running_mean", "running_var"]
    elif kind == "group_norm":
        op, names = "GroupNormalization", ["weight", "bias"]
        attrs = {"num_groups": layer.num_groups, "epsilon": layer.eps}
    elif kind == "instance_norm":
        op, names, attrs = "InstanceNormalization", ["weight", "bias"], {"epsilon": layer.eps}
    else:
        op, names, attrs = "Gemm", ["weight", "bias"], {"transB": 1}
        f32["weight"] = layer.params["weight"].astype(np.float32)
    for n in names:
        inits.append(numpy_helper.from_array(f32[n], n))
        inputs.append(n)
    out_shape = layer.output_shape(x.shape)
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["output"], **attrs)], "bench",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(out_shape))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # an operator this ORT build lacks: report, don't crash
        print(f"  (ONNX Runtime cannot run {op}-{opset}: {exc})", file=sys.stderr)
        return None
    out = np.empty(out_shape, np.float32)
    binding = sess.io_binding()
    binding.bind_cpu_input("input", x)
    binding.bind_output("output", "cpu", 0, np.float32, list(out_shape), out.ctypes.data)
    # ``out`` rides along in the closure: ORT writes through a raw pointer to it.
    return lambda out=out: sess.run_with_iobinding(binding)


def build_cases(threads: int, only: str | None = None) -> list[Case]:
    cases = []
    for name, kind, params, hyper, shape in _layer_cases():
        if only and only not in name:
            continue
        params = {k: v.astype(np.float32) for k, v in params.items()}  # as torch holds them
        layer = prepare(kind, params, **hyper)
        x = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
        out = np.empty(layer.output_shape(shape), np.float32)
        case = Case(name, layer, x, out=out)
        one_shot = BY_KIND[kind]
        case.peers[OURS[0]] = lambda f=one_shot, x=x, p=params, h=hyper: f(x, **p, **h)
        case.peers[OURS[1]] = lambda layer=layer, x=x: layer.apply(x)
        case.peers[OURS[2]] = lambda layer=layer, x=x, out=out: layer.apply(x, out)
        case.peers["numpy"] = _numpy_peer(layer, x)
        for label, peer in (("torch", _torch_peer(layer, x, params)),
                            ("onnxruntime", _ort_peer(layer, x, params, threads))):
            if peer is not None:
                case.peers[label] = peer
        if kind == "weight_norm":
            case.flops = 2.0 * shape[0] * layer.in_features * layer.out_features
        cases.append(case)
    return cases


def _time(fn: Callable[[], Any], flush: np.ndarray, idle_s: float = 0.0) -> float:
    flush += 1  # evict the caches: the next call reads its input from DRAM
    if idle_s:
        time.sleep(idle_s)  # every pool's threads stop spinning and park
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(cases: list[Case], reps: int, threads: int, modes: tuple[str, ...] = MODES,
            idle_ms: float = 10.0) -> list[dict[str, Any]]:
    """Median seconds per implementation and mode, peers interleaved in a new order each
    repetition (and the modes alternating, so that both see the same machine)."""
    flush = np.zeros(FLUSH_BYTES // 8)
    copy_src = np.ones(64 << 20, np.float32)  # 256 MiB: far beyond any cache
    copy_dst = np.empty_like(copy_src)
    copy = {"np.copyto": lambda: np.copyto(copy_dst, copy_src),
            "parallel copy": lambda: _parallel_copy(copy_src, copy_dst)}
    for fn in copy.values():
        fn()
    copy_times = {k: [_time(f, flush) for _ in range(max(5, reps // 2))] for k, f in copy.items()}
    copy_bw = {k: 2 * copy_src.nbytes / statistics.median(v) for k, v in copy_times.items()}
    ceiling = copy_bw["parallel copy"] if threads > 1 else max(copy_bw.values())
    rows = []
    order_rng = random.Random(0)
    for case in cases:
        for fn in case.peers.values():  # compile, fault in pages, warm the thread pools
            fn()
            fn()
        samples = {(m, k): [] for m in modes for k in case.peers}
        for _ in range(reps):
            for mode in modes:
                idle_s = idle_ms / 1e3 if mode == "idle" else 0.0
                names = list(case.peers)
                order_rng.shuffle(names)
                for name in names:
                    samples[mode, name].append(_time(case.peers[name], flush, idle_s))
        for mode in modes:
            med = {k: statistics.median(samples[mode, k]) for k in case.peers}
            peer_best = min(v for k, v in med.items() if k not in OURS)
            for name, t in med.items():
                rows.append({
                    "case": case.name, "impl": name, "mode": mode, "threads": threads,
                    "median_ms": t * 1e3, "gb_per_s": case.bytes / t / 1e9,
                    "frac_copy_bw": case.bytes / t / ceiling,
                    "gflops": case.flops / t / 1e9 if case.flops else None,
                    "speedup_vs_fastest_peer": peer_best / t,
                })
    rows.append({"case": "memory copy (256 MiB)", "impl": "copy bandwidth", "mode": modes[0],
                 "threads": threads, "median_ms": 2 * copy_src.nbytes / ceiling * 1e3,
                 "gb_per_s": ceiling / 1e9, "frac_copy_bw": 1.0, "gflops": None,
                 "speedup_vs_fastest_peer": None})
    return rows


def compile_times() -> dict[str, float]:
    """Seconds to import and warm every kind (FP32) with an empty and with a warm Numba cache."""
    code = ("import time; t=time.perf_counter(); import numpy as np; "
            "from normserve import kernels; "
            "from normserve.bench.kernels import _layer_cases; "
            "kinds = {k: (p, h) for _, k, p, h, _ in reversed(_layer_cases())}; "
            "[kernels.prepare(k, p, **h).warmup([np.dtype('float32')]) "
            "for k, (p, h) in kinds.items()]; "
            "print(time.perf_counter()-t)")
    times = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold cache", "warm cache"):
            out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                 capture_output=True, text=True).stdout
            times[label] = float(out.strip().splitlines()[-1])
    return times


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("| case | mode | impl | threads | median ms | GB/s | of copy BW | vs fastest peer |\n"
            "|---|---|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        ratio = r["speedup_vs_fastest_peer"]
        extra = f" ({r['gflops']:.0f} GFLOP/s)" if r.get("gflops") else ""
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['impl']}{extra} | {r['threads']} | "
            f"{r['median_ms']:.2f} | {r['gb_per_s']:.1f} | {r['frac_copy_bw']:.2f} | "
            f"{'' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines)


def format_summary(rows: list[dict[str, Any]]) -> str:
    """One line per case, mode and thread count: every implementation's median side by side,
    and each of the project's three calls as a ratio to the fastest peer (>1 is faster)."""
    peers = list(dict.fromkeys(r["impl"] for r in rows
                               if r["impl"] not in OURS and r["speedup_vs_fastest_peer"]))
    head = (f"| case | mode | thr | {' | '.join(OURS)} | {' | '.join(peers)} | "
            "one-shot / prepared / out= vs fastest peer |")
    lines = [head, "|" + "---|" * (4 + len(OURS) + len(peers))]
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["speedup_vs_fastest_peer"] is not None:
            groups.setdefault((r["case"], r["mode"], r["threads"]), {})[r["impl"]] = r
    for (case, mode, threads), by in groups.items():
        ms = [f"{by[k]['median_ms']:.2f}" if k in by else "-" for k in (*OURS, *peers)]
        ratios = " / ".join(f"{by[k]['speedup_vs_fastest_peer']:.2f}x" for k in OURS if k in by)
        lines.append(f"| {case} | {mode} | {threads} | {' | '.join(ms)} | {ratios} |")
    return "\n".join(lines)


def _set_threads(n: int) -> None:
    numba.set_num_threads(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="normserve bench", description=__doc__)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda runs the GPU benchmark (kernels.bench_cuda)")
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions per implementation")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="thread counts to run (default: 1 and all cores)")
    ap.add_argument("--only", help="run only the cases whose name contains this text")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                    help="back-to-back: each call right after the cache flush; idle: every "
                         "thread pool parked first (default: both)")
    ap.add_argument("--idle-ms", type=float, default=10.0,
                    help="how long the idle mode sleeps before each call (default 10 ms)")
    ap.add_argument("--json", help="write the rows to this JSON file")
    ap.add_argument("--no-compile-times", action="store_true",
                    help="skip measuring cold- and warm-cache compile times")
    args, rest = ap.parse_known_args(argv)
    if args.device == "cuda":
        from . import cuda as bench_cuda

        return bench_cuda.main(rest)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    cores = numba.config.NUMBA_NUM_THREADS
    threads = args.threads or sorted({1, cores})
    print(f"# normserve bench: {platform.processor() or platform.machine()}, {cores} cores, "
          f"numba {numba.__version__}, numpy {np.__version__}", flush=True)
    rows: list[dict[str, Any]] = []
    for t in threads:
        _set_threads(t)
        rows += measure(build_cases(t, args.only), args.reps, t, tuple(args.modes), args.idle_ms)
        print(format_table([r for r in rows if r["threads"] == t]), flush=True)
    print("\n" + format_summary(rows), flush=True)
    result: dict[str, Any] = {"rows": rows}
    if not args.no_compile_times:
        result["compile_seconds"] = compile_times()
        print(f"\nfirst call (import + compile, 7 kinds FP32): {result['compile_seconds']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
