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

``--dtype`` runs the cases in float32 (the default), bfloat16 (ml_dtypes' NumPy type for
normserve, ``torch.bfloat16`` for torch) or float16, one table per dtype. Each peer runs the
dtype as its users hold it: torch on tensors and weights of that dtype; ONNX Runtime on a
graph of that dtype (inputs, outputs and initializers), reported as not run, with ONNX
Runtime's reason, where its CPU provider has no kernel for a node; NumPy, which has no
half-precision arithmetic of its own worth timing, widens the inputs to float32 and rounds
its outputs back. The parameters are rounded to the dtype first (as a model converted to it
holds them), so every column computes with the same weights. Bandwidth counts the dtype's
itemsize.
"""

from __future__ import annotations

import argparse
import json
import os
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

from normserve.bench.extra import require
from normserve.bench.machine import describe
from normserve.kernels import PreparedLayer, dtypes, prepare
from normserve.kernels.cpu_jit import jit
from normserve.kernels.kinds import Example, Kind, OnnxNode, Sizes, kinds
from normserve.kernels.kinds.fused_norms import numpy_sum

FLUSH_BYTES = 256 << 20
MODES = ("back-to-back", "idle")
#: The project's own columns, in table order; every other implementation is a peer.
OURS = ("normserve one-shot", "normserve prepared", "normserve out=")
#: ``--dtype`` choices (bfloat16 needs ml_dtypes, which the kernels' half precision needs).
DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16)}
if dtypes.BFLOAT16 is not None:
    DTYPES["bfloat16"] = dtypes.BFLOAT16
COPY = "copy bandwidth"


class NotRun(Exception):
    """A peer that cannot run this case (say, no kernel for the dtype): its reason is shown
    in the table instead of a time."""


def _reason(exc: BaseException) -> str:
    """One line for a table cell: ONNX Runtime's "[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED :"
    prefix dropped, no Markdown cell separators."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text.split(" : ")[-1].replace("|", "/")


@dataclass
class Case:
    """One benchmark shape: the layer, its inputs (one per ``layer.input_names``), and the
    peers' equivalents."""

    name: str
    layer: PreparedLayer
    inputs: tuple[np.ndarray, ...]
    peers: dict[str, Callable[[], Any]] = field(default_factory=dict)
    flops: float = 0.0
    outs: tuple[np.ndarray, ...] = ()  # what the ``out=`` column writes into
    not_run: dict[str, str] = field(default_factory=dict)  # peer -> why it has no time

    @property
    def dtype(self) -> np.dtype:
        return self.inputs[0].dtype

    @property
    def out(self) -> np.ndarray:
        return self.outs[0]

    @property
    def bytes(self) -> int:
        """Inputs read and outputs written (a fused norm: x and residual, y and h), plus the
        parameters as FP32."""
        x = self.inputs[0]
        out = int(np.prod(self.layer.output_shape(x.shape))) * x.itemsize
        params = sum(v.nbytes for v in self.layer.params.values() if v is not None) // 2
        return sum(a.nbytes for a in self.inputs) + out * len(self.layer.output_names) + params


@jit(parallel=True, nogil=True, cache=True)
def _parallel_copy(src, dst):
    n = src.shape[0]
    chunk = 1 << 16
    for c in prange((n + chunk - 1) // chunk):
        lo = c * chunk
        hi = min(lo + chunk, n)
        dst[lo:hi] = src[lo:hi]


def _torch_tensor(x: np.ndarray) -> Any:
    """A CPU tensor sharing ``x``'s memory; bfloat16 through its 16-bit view (torch does not
    take ml_dtypes' arrays)."""
    import torch

    if x.dtype == dtypes.BFLOAT16:
        return torch.from_numpy(x.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(x)


def _torch_peer(kind: Kind, layer: PreparedLayer, inputs: tuple[np.ndarray, ...],
                params: dict[str, np.ndarray]) -> Callable[[], Any]:
    """The kind's torch call on CPU tensors sharing the inputs' memory, the parameters in
    the inputs' dtype (a model converted with ``.to(dtype)``)."""
    try:
        import torch  # noqa: F401
    except ImportError as exc:
        raise NotRun(f"torch is not installed ({exc})") from None
    dtype = inputs[0].dtype
    tensors = {k: _torch_tensor(np.asarray(v, dtype=dtype)) for k, v in params.items()}
    xs = tuple(_torch_tensor(x) for x in inputs)
    return kind.torch_peer(layer, xs[0] if len(xs) == 1 else xs, tensors)


def _numpy_peer(kind: Kind, layer: PreparedLayer,
                inputs: tuple[np.ndarray, ...]) -> Callable[[], Any]:
    """The kind's NumPy call; for a half-precision dtype, on float32 copies of the inputs
    (widened inside the timed call) with its outputs rounded back, as a NumPy user of
    bfloat16 data computes (ml_dtypes' bfloat16 ufuncs are element-at-a-time loops
    accumulating in bfloat16)."""
    if inputs[0].dtype == np.float32:
        return kind.numpy_peer(layer, inputs[0] if len(inputs) == 1 else inputs)
    dtype = inputs[0].dtype
    wide = tuple(np.empty(x.shape, np.float32) for x in inputs)
    run = kind.numpy_peer(layer, wide[0] if len(wide) == 1 else wide)

    def call():
        for w, x in zip(wide, inputs, strict=True):
            np.copyto(w, x, casting="unsafe")
        out = run()
        return (tuple(o.astype(dtype) for o in out) if isinstance(out, tuple)
                else out.astype(dtype))

    return call


def _onnx_type(dtype: np.dtype) -> int:
    from onnx import TensorProto

    return {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.float16): TensorProto.FLOAT16,
            dtypes.BFLOAT16: TensorProto.BFLOAT16}[dtype]


def _ort_value(a: np.ndarray) -> Any:
    """An OrtValue over ``a``'s memory (bfloat16 through its 16-bit view)."""
    from onnxruntime import OrtValue

    view = a.view(np.uint16) if a.dtype == dtypes.BFLOAT16 else a
    return OrtValue.ortvalue_from_numpy_with_onnx_type(view, _onnx_type(a.dtype))


def _ort_run(model: Any, label: str, names: tuple[str, ...], inputs: tuple[np.ndarray, ...],
             outputs: tuple[str, ...], out_shape: tuple[int, ...],
             threads: int) -> Callable[[], Any]:
    """``model`` in ONNX Runtime through IOBinding (inputs and outputs bound once, in the
    inputs' dtype)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(model.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # an operator (or a dtype of it) this ORT build lacks: the
        # table shows the reason in the peer's row
        raise NotRun(f"ONNX Runtime {ort.__version__} CPU, {label}: {_reason(exc)}") from None
    binding = sess.io_binding()
    values = [_ort_value(x) for x in inputs]
    for name, value in zip(names, values, strict=True):
        binding.bind_ortvalue_input(name, value)
    outs = [np.empty(out_shape, inputs[0].dtype) for _ in outputs]
    values += [_ort_value(out) for out in outs]
    for name, value in zip(outputs, values[len(names):], strict=True):
        binding.bind_ortvalue_output(name, value)
    # ``outs`` (and the OrtValues over them) ride along in the closure: ORT writes to them.
    return lambda outs=outs, values=values: sess.run_with_iobinding(binding)


def _ort_peer(node: OnnxNode, names: tuple[str, ...], inputs: tuple[np.ndarray, ...],
              out_shape: tuple[int, ...], threads: int) -> Callable[[], Any]:
    """The kind's one-node ONNX graph (its standard operator, or ONNX Runtime's fused contrib
    one for the fused norms), in the inputs' dtype."""
    try:
        from onnx import helper, numpy_helper
    except ImportError as exc:
        raise NotRun(f"onnx is not installed ({exc})") from None
    dtype = inputs[0].dtype
    elem = _onnx_type(dtype)
    inits = [numpy_helper.from_array(np.asarray(v).astype(dtype), k)
             for k, v in node.inputs.items()]
    outputs = tuple(o for o in node.outputs if o)
    graph = helper.make_graph(
        [helper.make_node(node.op, [*names, *node.inputs], list(node.outputs),
                          domain=node.domain or None, **node.attrs)], "bench",
        [helper.make_tensor_value_info(n, elem, list(x.shape))
         for n, x in zip(names, inputs, strict=True)],
        [helper.make_tensor_value_info(o, elem, list(out_shape)) for o in outputs],
        inits)
    opsets = [helper.make_opsetid("", node.opset)]
    if node.domain:
        opsets.append(helper.make_opsetid(node.domain, 1))
    return _ort_run(helper.make_model(graph, opset_imports=opsets), f"{node.op}-{node.opset}",
                    names, inputs, outputs, out_shape, threads)


def _ort_standard_graph(layer: Any, params: dict[str, np.ndarray],
                        inputs: tuple[np.ndarray, ...], out_shape: tuple[int, ...],
                        threads: int) -> Callable[[], Any]:
    """A fused norm as a user exports the block: ``Add`` (a second for the skip bias), then
    the unfused kind's standard operator, in the inputs' dtype; what ONNX Runtime runs
    unfused (its graph optimiser may fuse it again, as it would in a user's session)."""
    try:
        from onnx import helper, numpy_helper
    except ImportError as exc:
        raise NotRun(f"onnx is not installed ({exc})") from None
    dtype = inputs[0].dtype
    elem = _onnx_type(dtype)
    norm = kinds()[layer.unfused].onnx_peer(layer.unfused_layer(), params)
    inits = {k: np.asarray(v).astype(dtype) for k, v in norm.inputs.items()}
    skip = params.get("skip_bias")
    nodes = [helper.make_node("Add", ["input", "residual"],
                              ["residual_out" if skip is None else "sum"])]
    if skip is not None:
        inits["skip_bias"] = np.asarray(skip).astype(dtype)
        nodes.append(helper.make_node("Add", ["sum", "skip_bias"], ["residual_out"]))
    nodes.append(helper.make_node(norm.op, ["residual_out", *norm.inputs], ["output"],
                                  **norm.attrs))
    names, outputs = ("input", "residual"), ("output", "residual_out")
    graph = helper.make_graph(
        nodes, "bench",
        [helper.make_tensor_value_info(n, elem, list(out_shape)) for n in names],
        [helper.make_tensor_value_info(n, elem, list(out_shape)) for n in outputs],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", norm.opset)])
    return _ort_run(model, f"Add + {norm.op}-{norm.opset}", names, inputs, outputs, out_shape,
                    threads)


def _unfused_calls(layer: Any, inputs: tuple[np.ndarray, ...],
                   outs: tuple[np.ndarray, ...]) -> Callable[[], Any]:
    """normserve's own two calls a fused norm replaces: NumPy's add, then the unfused norm."""
    norm = layer.unfused_layer()
    y, h = outs
    add = numpy_sum(layer, *inputs, h)
    return lambda: (norm.apply(add(), y), h)


def _selects(only: str, name: str) -> bool:
    """``only`` occurs in ``name`` from the start of a word: "rms_norm" selects the unfused
    kind's cases, not add_rms_norm's; "256x4096" selects every kind's at that shape."""
    return name.startswith(only) or f" {only}" in name


def build_cases(threads: int, only: str | None = None,
                dtype: Any = np.float32) -> list[Case]:
    """One case per kind and CPU benchmark shape its declaration names, in ``dtype``."""
    dtype = np.dtype(dtype)
    cases = []
    for kind in kinds().values():
        for sizes in kind.benchmarks.cpu:
            example = kind.example(np.random.default_rng(0), sizes, True)
            shape = example.shape(sizes.batch)
            name = f"{kind.name} {'x'.join(map(str, shape))}"
            if only and not _selects(only, name):
                continue
            cases.append(_case(kind, name, example, shape, threads, dtype))
    return cases


def _case(kind: Kind, name: str, example: Example, shape: tuple[int, ...],
          threads: int, dtype: np.dtype = DTYPES["float32"]) -> Case:
    # As torch holds them after ``.to(dtype)``: rounded to the dtype, kept as float32 here.
    params = {k: v.astype(dtype).astype(np.float32) for k, v in example.params.items()}
    hyper = example.hyper
    layer = prepare(kind.name, params, **hyper)
    rng = np.random.default_rng(1)
    xs = tuple(rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
               for _ in layer.input_names)
    out_shape = layer.output_shape(shape)
    outs = tuple(np.empty(out_shape, dtype) for _ in layer.output_names)
    case = Case(name, layer, xs, outs=outs)
    one_shot = kind.functional
    case.peers[OURS[0]] = lambda f=one_shot, xs=xs, p=params, h=hyper: f(*xs, **p, **h)
    if len(xs) == 1:  # the call a user makes: apply(x), not the service's apply_all
        case.peers[OURS[1]] = lambda layer=layer, x=xs[0]: layer.apply(x)
        case.peers[OURS[2]] = lambda layer=layer, x=xs[0], out=outs[0]: layer.apply(x, out)
    else:
        case.peers[OURS[1]] = lambda layer=layer, xs=xs: layer.apply(*xs)
        case.peers[OURS[2]] = lambda layer=layer, xs=xs, outs=outs: layer.apply(*xs, *outs)
    peers: list[tuple[str, Callable[[], Callable[[], Any]]]] = [
        ("numpy", lambda: _numpy_peer(kind, layer, xs)),
        ("torch", lambda: _torch_peer(kind, layer, xs, params)),
        ("onnxruntime", lambda: _ort_peer(kind.onnx_peer(layer, params), layer.input_names,
                                          xs, out_shape, threads))]
    if len(xs) > 1:  # a fused kind: also the unfused pair, in ONNX Runtime and in normserve
        peers += [("onnxruntime add+norm",
                   lambda: _ort_standard_graph(layer, params, xs, out_shape, threads)),
                  ("normserve add+norm", lambda: _unfused_calls(layer, xs, outs))]
    for label, build in peers:
        try:
            case.peers[label] = build()
        except NotRun as exc:
            case.not_run[label] = str(exc)
    if kind.benchmarks.gemm:
        case.flops = 2.0 * layer.work(shape)
    return case


def warm_every_kind() -> None:
    """Prepare and warm (FP32) a small layer of every kind: what the compile times measure."""
    for kind in kinds().values():
        example = kind.example(np.random.default_rng(0), Sizes(), True)
        prepare(kind.name, example.params, **example.hyper).warmup([np.dtype(np.float32)])


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
        for name, fn in list(case.peers.items()):  # compile, fault in pages, warm the pools
            try:
                fn()
                fn()
            except Exception as exc:  # a peer without this dtype's kernel: say so, go on
                if name in OURS:
                    raise
                del case.peers[name]
                case.not_run[name] = f"{type(exc).__name__}: {_reason(exc)}"
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
            peer_best = min((v for k, v in med.items() if k not in OURS), default=None)
            for name, t in med.items():
                rows.append({
                    "case": case.name, "impl": name, "mode": mode, "threads": threads,
                    "dtype": case.dtype.name,
                    "median_ms": t * 1e3, "gb_per_s": case.bytes / t / 1e9,
                    "frac_copy_bw": case.bytes / t / ceiling,
                    "gflops": case.flops / t / 1e9 if case.flops else None,
                    "speedup_vs_fastest_peer": None if peer_best is None else peer_best / t,
                })
            rows += [{"case": case.name, "impl": name, "mode": mode, "threads": threads,
                      "dtype": case.dtype.name, "median_ms": None, "gb_per_s": None,
                      "frac_copy_bw": None, "gflops": None, "speedup_vs_fastest_peer": None,
                      "not_run": reason} for name, reason in case.not_run.items()]
    rows.append({"case": "memory copy (256 MiB)", "impl": COPY, "mode": modes[0],
                 "threads": threads, "median_ms": 2 * copy_src.nbytes / ceiling * 1e3,
                 "gb_per_s": ceiling / 1e9, "frac_copy_bw": 1.0, "gflops": None,
                 "speedup_vs_fastest_peer": None})
    return rows


def compile_times() -> dict[str, float]:
    """Seconds to import and warm every kind (FP32) with an empty and with a warm Numba cache."""
    code = ("import time; t=time.perf_counter(); "
            "from normserve.bench.kernels import warm_every_kind; warm_every_kind(); "
            "print(time.perf_counter()-t)")
    times = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("cold cache", "warm cache"):
            out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                 capture_output=True, text=True).stdout
            times[label] = float(out.strip().splitlines()[-1])
    return times


def _dtype_of(rows: list[dict[str, Any]]) -> str:
    """The dtype the rows' cases ran in (one per table)."""
    return next((r["dtype"] for r in rows if r.get("dtype")), "float32")


def format_table(rows: list[dict[str, Any]]) -> str:
    """One row per implementation; the header names the dtype the cases ran in. A peer that
    could not run shows why instead of a time."""
    head = (f"| case ({_dtype_of(rows)}) | mode | impl | threads | median ms | GB/s | "
            "of copy BW | vs fastest peer |\n|---|---|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        if r.get("not_run"):
            lines.append(f"| {r['case']} | {r['mode']} | {r['impl']} | {r['threads']} | "
                         f"not run: {r['not_run']} | | | |")
            continue
        ratio = r["speedup_vs_fastest_peer"]
        extra = f" ({r['gflops']:.0f} GFLOP/s)" if r.get("gflops") else ""
        lines.append(
            f"| {r['case']} | {r['mode']} | {r['impl']}{extra} | {r['threads']} | "
            f"{r['median_ms']:.2f} | {r['gb_per_s']:.1f} | {r['frac_copy_bw']:.2f} | "
            f"{'' if ratio is None else f'{ratio:.2f}x'} |")
    return "\n".join(lines)


def format_summary(rows: list[dict[str, Any]]) -> str:
    """One table per dtype, its header naming it; one line per case, mode and thread count:
    every implementation's median side by side, and each of the project's three calls as a
    ratio to the fastest peer (>1 is faster). Peers that could not run read "not run", their
    reasons listed under the table."""
    by_dtype: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["impl"] != COPY:
            by_dtype.setdefault(r.get("dtype") or "float32", []).append(r)
    return "\n\n".join(_summary(dtype, rs) for dtype, rs in by_dtype.items())


def _summary(dtype: str, rows: list[dict[str, Any]]) -> str:
    peers = list(dict.fromkeys(r["impl"] for r in rows if r["impl"] not in OURS))
    head = (f"| case ({dtype}) | mode | thr | {' | '.join(OURS)} | {' | '.join(peers)} | "
            "one-shot / prepared / out= vs fastest peer |")
    lines = [head, "|" + "---|" * (4 + len(OURS) + len(peers))]
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    reasons: dict[tuple[str, str], str] = {}
    for r in rows:
        groups.setdefault((r["case"], r["mode"], r["threads"]), {})[r["impl"]] = r
        if r.get("not_run"):
            reasons.setdefault((r["case"], r["impl"]), r["not_run"])
    for (case, mode, threads), by in groups.items():
        ms = ["-" if k not in by else "not run" if by[k].get("not_run")
              else f"{by[k]['median_ms']:.2f}" for k in (*OURS, *peers)]
        ratios = " / ".join(f"{by[k]['speedup_vs_fastest_peer']:.2f}x" for k in OURS
                            if k in by and by[k]["speedup_vs_fastest_peer"] is not None)
        lines.append(f"| {case} | {mode} | {threads} | {' | '.join(ms)} | {ratios} |")
    if reasons:
        lines.append("")
        lines += [f"- not run, {impl} on {case} ({dtype}): {why}"
                  for (case, impl), why in reasons.items()]
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
    if not require("normserve bench"):
        return 2
    ap = argparse.ArgumentParser(prog="normserve bench", description=__doc__)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda runs the GPU benchmark (kernels.bench_cuda)")
    ap.add_argument("--reps", type=int, default=30, help="timed repetitions per implementation")
    ap.add_argument("--threads", type=int, nargs="+", default=None,
                    help="thread counts to run (default: 1 and all cores)")
    ap.add_argument("--only", help="run only the cases whose name contains this text from "
                                   "the start of a word")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES),
                    help="back-to-back: each call right after the cache flush; idle: every "
                         "thread pool parked first (default: both)")
    ap.add_argument("--idle-ms", type=float, default=10.0,
                    help="how long the idle mode sleeps before each call (default 10 ms)")
    ap.add_argument("--dtype", nargs="+", choices=list(DTYPES), default=["float32"],
                    help="the element types to run every case in, one table each (default "
                         "float32; e.g. --dtype float32 bfloat16)")
    ap.add_argument("--json", help="write the rows to this JSON file")
    ap.add_argument("--no-compile-times", action="store_true",
                    help="skip measuring cold- and warm-cache compile times")
    args, rest = ap.parse_known_args(argv)
    if args.device == "cuda":
        if args.dtype != ["float32"]:
            ap.error("--dtype is the CPU benchmark's (the GPU one times FP32 and FP16)")
        from . import cuda as bench_cuda

        return bench_cuda.main(rest)
    if rest:
        ap.error(f"unrecognized arguments: {' '.join(rest)}")
    cores = numba.config.NUMBA_NUM_THREADS
    threads = args.threads or sorted({1, cores})
    print(f"# normserve bench: {describe()}; Numba pool {cores} threads, "
          f"numba {numba.__version__}, numpy {np.__version__}; "
          f"dtype {', '.join(args.dtype)}", flush=True)
    rows: list[dict[str, Any]] = []
    for dtype in args.dtype:
        for t in threads:
            _set_threads(t)
            new = measure(build_cases(t, args.only, DTYPES[dtype]), args.reps, t,
                          tuple(args.modes), args.idle_ms)
            rows += new
            print(format_table(new), flush=True)
    print("\n" + format_summary(rows), flush=True)
    result: dict[str, Any] = {"rows": rows}
    if not args.no_compile_times:
        result["compile_seconds"] = compile_times()
        print(f"\nfirst call (import + compile, {len(kinds())} kinds FP32): "
              f"{result['compile_seconds']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
