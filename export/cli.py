"""``normserve export``: one model to ONNX with a parity report, or a whole Triton repository.

Exit codes: 0 exported with parity, 1 parity mismatch (nothing written unless ``--force``),
2 bad arguments, model folder or opset.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import onnx

from normserve.repository import ModelError, load_model

from .errors import ExportError
from .model import DTYPES, to_onnx
from .opsets import MIN_OPSET, default_opset, max_opset
from .parity import check_parity
from .triton import write_triton_repository

OK, MISMATCH, BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="normserve export",
        description="Export a model folder to ONNX and prove parity with the kernels, "
                    "or export a whole model repository as a Triton model repository.")
    p.add_argument("path", help="a model folder, or with --triton-repository a model repository")
    p.add_argument("-o", "--output", help="where to write model.onnx")
    p.add_argument("--triton-repository", metavar="OUT",
                   help="write OUT/<name>/1/model.onnx and OUT/<name>/config.pbtxt per model")
    p.add_argument("--opset", type=int, default=None,
                   help=f"ONNX opset, {MIN_OPSET}..{max_opset()} (default {default_opset()})")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                   help="the graph's input/output type; statistics stay in FP32 or wider")
    form = p.add_mutually_exclusive_group()
    form.add_argument("--stable", dest="form", action="store_const", const="stable",
                      help="two-pass decomposition with float64 statistics for every kind")
    form.add_argument("--native", dest="form", action="store_const", const="native",
                      help="the ONNX normalisation operators wherever the opset has them")
    p.add_argument("--ort-fused", action="store_true",
                   help="ONNX Runtime's fused com.microsoft operators where a kind has one "
                        "(add_rms_norm: SkipSimplifiedLayerNormalization, add_layer_norm: "
                        "SkipLayerNormalization); such a graph runs in ONNX Runtime only")
    p.add_argument("--force", action="store_true", help="write the model despite a mismatch")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(form="auto")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), as a return code
        return int(exc.code or 0)
    if args.triton_repository is None and args.output is None:
        parser.print_usage(sys.stderr)
        print("normserve export: give -o model.onnx, or --triton-repository OUT",
              file=sys.stderr)
        return BAD_INPUT
    try:
        if args.triton_repository is not None:
            return _triton(args)
        return _single(args)
    except (ModelError, ExportError) as exc:
        print(f"normserve export: {exc}", file=sys.stderr)
        return BAD_INPUT


def _single(args: argparse.Namespace) -> int:
    _, layer = load_model(args.path)
    model = to_onnx(layer, args.opset, dtype=args.dtype, form=args.form,
                    ort_fused=args.ort_fused)
    report = check_parity(layer, model)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    if not report.ok and not args.force:
        print("normserve export: parity mismatch, nothing written (--force writes anyway)",
              file=sys.stderr)
        return MISMATCH
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return OK if report.ok else MISMATCH


def _triton(args: argparse.Namespace) -> int:
    result = write_triton_repository(args.path, args.triton_repository, opset=args.opset,
                                     dtype=args.dtype, form=args.form,
                                     ort_fused=args.ort_fused)
    if args.json:
        print(json.dumps({"written": {k: str(v) for k, v in result.written.items()},
                          "errors": result.errors, "skipped": result.skipped,
                          "reports": {k: r.to_dict() for k, r in result.reports.items()}},
                         indent=2))
    else:
        for report in result.reports.values():
            print(report.format())
        for name, path in result.written.items():
            print(f"wrote {path}/config.pbtxt and {path}/1/model.onnx ({name})")
    for name, message in result.errors.items():
        print(f"normserve export: {name}: {message}", file=sys.stderr)
    for name in result.skipped:
        print(f"normserve export: skipped {name!r} (not a valid model name)", file=sys.stderr)
    if result.errors:
        return BAD_INPUT
    return OK if result.ok else MISMATCH
