"""Parity: the exported graph against the prepared layer's kernel, in two executors.

Each case draws inputs (batch 1, 7, a large batch, and large-offset data), runs the graph in
ONNX Runtime and in ``onnx.reference.ReferenceEvaluator`` (an independent executor of the
same graph) and compares with ``layer.apply``. A float64 evaluation from ``kernels.oracle``
(which shares no code with the kernels) says which side is the less accurate one.

Agreement is ``|a - b| <= tol * (1 + |b|)`` with the SPEC 1 tolerances of ``kernels.oracle``
(absolute and relative are equal there, so one number is the bound): 1e-5 for FP32, 2e-3
for FP16; large-offset data (``1e4 + N(0, 1)``) gets the SPEC's 1e-3 for FP32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from normserve.kernels.oracle import LARGE_OFFSET_TOLERANCE, reference_for, tolerance

from .builders import is_auto_stable
from .errors import ParityError
from .model import NUMPY_DTYPES, sample_dims, to_onnx

#: Graph against kernel per export dtype: the oracle's SPEC tolerance (atol, which is rtol).
TOLERANCE = {name: tolerance(dt)[0] for name, dt in NUMPY_DTYPES.items()}
OFFSET_TOLERANCE = {"fp32": LARGE_OFFSET_TOLERANCE, "fp16": TOLERANCE["fp16"]}
#: Large-offset data: SPEC's 1e4 for FP32; 1e3 for FP16, where N(0, 1) noise still survives
#: rounding (the FP16 spacing at 1e3 is 0.5).
OFFSET = {"fp32": 1e4, "fp16": 1e3}
FREE_DIM = 5
LARGE_BATCH = 256
MAX_ELEMENTS = 1 << 21


@dataclass
class Case:
    """One input set through one executor."""

    data: str
    executor: str
    batch: int
    dtype: str
    max_abs: float
    max_rel: float
    tol: float
    passed: bool
    err_graph: float  # mixed error of the graph against float64
    err_kernel: float  # mixed error of the kernel against float64
    output: str = "output"  # which graph output (a fused kind has two)


@dataclass
class ParityReport:
    kind: str
    opset: int
    dtype: str
    form: str
    cases: list[Case] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.cases) and all(c.passed for c in self.cases)

    def max_errors(self) -> dict[str, float]:
        """Worst absolute and relative disagreement over all cases."""
        return {"max_abs": max((c.max_abs for c in self.cases), default=0.0),
                "max_rel": max((c.max_rel for c in self.cases), default=0.0)}

    def raise_if_failed(self) -> ParityReport:
        if not self.ok:
            bad = [c for c in self.cases if not c.passed]
            raise ParityError(f"{self.kind}: {len(bad)} parity case(s) beyond tolerance:\n"
                              + self.format(), self)
        return self

    def format(self) -> str:
        """The report as a text table, with notes."""
        head = (f"parity: {self.kind}  opset {self.opset}  {self.dtype}  form {self.form}  "
                f"-> {'OK' if self.ok else 'MISMATCH'}")
        labels = [c.data if c.output == "output" else f"{c.data}:{c.output}"
                  for c in self.cases]
        w = max([13, *(len(label) + 1 for label in labels)])
        rows = [head, f"  {'data':<{w}}{'executor':<10}{'batch':>6}  {'max abs':>10}  "
                      f"{'max rel':>10}  {'tol':>7}  {'graph-f64':>10}  {'kernel-f64':>10}"]
        for data, c in zip(labels, self.cases, strict=True):
            rows.append(f"  {data:<{w}}{c.executor:<10}{c.batch:>6}  {c.max_abs:>10.3e}  "
                        f"{c.max_rel:>10.3e}  {c.tol:>7.0e}  {c.err_graph:>10.3e}  "
                        f"{c.err_kernel:>10.3e}  {'ok' if c.passed else 'FAIL'}")
        rows += [f"  note: {n}" for n in self.notes]
        return "\n".join(rows)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "opset": self.opset, "dtype": self.dtype, "form": self.form,
                "ok": self.ok, **self.max_errors(), "notes": self.notes,
                "cases": [c.__dict__ for c in self.cases]}


def _mixed(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / (1 + |b|), NaN counted as infinite (a NaN where b has none fails)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    same_nan = np.isnan(a) & np.isnan(b)
    err = np.abs(a - b) / (1.0 + np.abs(b))
    err = np.where(same_nan, 0.0, np.where(np.isnan(err), np.inf, err))
    return float(err.max(initial=0.0))


def _errors(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max abs, max rel) of a against b; rel over elements with |b| >= 1e-3."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    diff = np.abs(a - b)
    diff = np.where(np.isnan(a) & np.isnan(b), 0.0, np.where(np.isnan(diff), np.inf, diff))
    big = np.abs(b) >= 1e-3
    rel = diff[big] / np.abs(b[big])
    return float(diff.max(initial=0.0)), float(rel.max(initial=0.0))


def _inputs(dims: tuple[int, ...], dtype: str, large_batch: int, count: int,
            rng: np.random.Generator) -> list[tuple[str, tuple[np.ndarray, ...]]]:
    """Input sets (one array per graph input); large-offset data offsets the first input
    only, so a fused kind's sum ``x + residual`` carries the offset once."""
    shape = tuple(FREE_DIM if d == -1 else d for d in dims)
    per_sample = math.prod(shape)
    large = max(8, min(large_batch, MAX_ELEMENTS // max(per_sample, 1)))
    npdt = NUMPY_DTYPES[dtype]
    out = [("random", tuple(rng.standard_normal((n, *shape)).astype(npdt)
                            for _ in range(count))) for n in (1, 7, large)]
    offset = [OFFSET[dtype] + rng.standard_normal((7, *shape))]
    offset += [rng.standard_normal((7, *shape)) for _ in range(count - 1)]
    out.append(("large-offset", tuple(a.astype(npdt) for a in offset)))
    return out


def _ort_session(model: onnx.ModelProto):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def check_parity(layer, model: onnx.ModelProto | None = None, *, opset: int | None = None,
                 dtype: str = "fp32", form: str = "auto", input_shape=None,
                 large_batch: int = LARGE_BATCH, reference_evaluator: bool = True,
                 seed: int = 0, ort_fused: bool = False) -> ParityReport:
    """Run ``model`` (exported from ``layer`` when not given) against the kernel, every
    graph output against the layer's output of that name.

    Returns the report; call ``raise_if_failed()`` (or read ``ok``) to act on it.
    """
    if model is None:
        model = to_onnx(layer, opset, dtype=dtype, form=form, input_shape=input_shape,
                        ort_fused=ort_fused)
    props = {p.key: p.value for p in model.metadata_props}
    dtype = props.get("dtype", dtype)
    report = ParityReport(layer.kind, model.opset_import[0].version, dtype,
                          props.get("form", form))
    dims = sample_dims(layer, input_shape)
    executors: list[tuple[str, Any]] = [("ort", _ort_session(model).run)]
    fused = props.get("ort_fused") == "true"
    if reference_evaluator and not fused:  # the evaluator knows no com.microsoft operator
        from onnx.reference import ReferenceEvaluator

        executors.append(("onnx-ref", ReferenceEvaluator(model).run))
    rng = np.random.default_rng(seed)
    names, outputs = layer.input_names, layer.output_names
    for data, xs in _inputs(dims, dtype, large_batch, len(names), rng):
        expected_all = layer.apply_all(xs)
        exact_all = reference_for(layer, xs[0] if len(xs) == 1 else xs)
        exact_all = exact_all if isinstance(exact_all, tuple) else (exact_all,)
        tol = (OFFSET_TOLERANCE if data == "large-offset" else TOLERANCE)[dtype]
        batch = xs[0].shape[0]
        for name, run in executors:
            if name == "onnx-ref" and batch not in (7,):
                continue  # the reference evaluator is slow; batch 7 covers its semantics
            got_all = run(None, dict(zip(names, xs, strict=True)))
            for out, got, expected, exact in zip(outputs, got_all, expected_all, exact_all,
                                                 strict=True):
                max_abs, max_rel = _errors(got, expected)
                passed = got.dtype == expected.dtype and _mixed(got, expected) <= tol
                report.cases.append(Case(data, name, batch, dtype, max_abs, max_rel, tol,
                                         passed, _mixed(got, exact), _mixed(expected, exact),
                                         out))
    _attribute(report, fused)
    if fused and dtype == "fp16" and not report.ok:
        report.notes.append(
            "ONNX Runtime's fused operators normalise the FP32 sum x + residual, where the "
            "kernels (and the standard graph) normalise h rounded to FP16; export without "
            "--ort-fused for the graph that matches them")
    if report.form == "auto" and props.get("graph_form") == "stable" and \
            is_auto_stable(layer.kind):
        report.notes.append(
            f"{layer.kind} is exported as the stable two-pass form (float64 statistics): ONNX "
            f"Runtime's own operator misses the SPEC tolerance on large-offset data; "
            f"form='native' (--native) exports the operator anyway")
    return report


def _attribute(report: ParityReport, fused: bool = False) -> None:
    """Say where the graph's executor, not the kernel, is the less accurate side."""
    tol = TOLERANCE[report.dtype]
    for c in report.cases:
        if c.executor == "ort" and c.err_graph > max(tol, 4 * c.err_kernel):
            hint = ("; export without ort_fused (--ort-fused) for the standard graph, which "
                    "matches the kernel" if fused else "" if report.form == "stable" else
                    "; export with form='stable' (--stable) for a two-pass graph with float64 "
                    "statistics that matches the kernel")
            report.notes.append(
                f"ONNX Runtime is the less accurate side on {c.data} data (error against "
                f"float64 {c.err_graph:.2e}, kernel {c.err_kernel:.2e}){hint}")
            break
