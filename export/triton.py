"""A Triton Inference Server model repository: ``OUT/<name>/1/model.onnx`` + ``config.pbtxt``.

The config is written as protobuf text by hand, so exporting needs no Triton package; the
tests parse it against Triton's own ``ModelConfig`` message so a misspelt field cannot pass.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from normserve.repository import ModelConfig, ModelError, load_model, scan_repository

from .errors import ExportError
from .model import sample_dims, to_onnx
from .parity import ParityReport, check_parity

DATA_TYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16"}
VERSION = "1"


def _tensor(name: str, dtype: str, dims: tuple[int, ...]) -> str:
    return (f"  {{\n    name: {json.dumps(name)}\n    data_type: {DATA_TYPES[dtype]}\n"
            f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}")


def config_pbtxt(name: str, config: ModelConfig, layer, dtype: str = "fp32") -> str:
    """Triton's config for one exported model, with dynamic batching from config.json."""
    if dtype not in DATA_TYPES:
        raise ExportError(f"dtype must be one of {sorted(DATA_TYPES)}, got {dtype!r}")
    dims = sample_dims(layer)
    return "\n".join([
        f"name: {json.dumps(name)}",
        'platform: "onnxruntime_onnx"',
        f"max_batch_size: {config.max_batch_size}",
        "input [", ",\n".join(_tensor(n, dtype, dims) for n in layer.input_names), "]",
        "output [", ",\n".join(_tensor(n, dtype, layer.sample_output_shape(dims))
                               for n in layer.output_names), "]",
        "dynamic_batching {",
        f"  max_queue_delay_microseconds: {config.max_queue_delay_us}",
        "  default_queue_policy {",
        f"    max_queue_size: {config.max_queue_size}",
        "  }",
        "}",
        "",
    ])


@dataclass
class TritonExport:
    """What a repository export wrote, what it could not, and every parity report."""

    written: dict[str, Path] = field(default_factory=dict)
    reports: dict[str, ParityReport] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and all(r.ok for r in self.reports.values())


def write_triton_repository(model_repository: str | Path, out: str | Path, *,
                            opset: int | None = None, dtype: str = "fp32", form: str = "auto",
                            check: bool = True, ort_fused: bool = False) -> TritonExport:
    """Export every model of a normserve repository into a Triton repository at ``out``.

    A model that fails to load, export or match the kernel is left out and named in
    ``errors`` / ``reports``; the others are still written.
    """
    folders, skipped = scan_repository(model_repository)
    result = TritonExport(skipped=list(skipped))
    out = Path(out)
    for folder in folders:
        name = folder.name
        try:
            config, layer = load_model(folder)
            model = to_onnx(layer, opset, dtype=dtype, form=form, ort_fused=ort_fused)
            if check:
                result.reports[name] = report = check_parity(layer, model)
                if not report.ok:
                    continue
            pbtxt = config_pbtxt(name, config, layer, dtype)
        except (ModelError, ExportError) as exc:
            result.errors[name] = str(exc)
            continue
        target = out / name
        (target / VERSION).mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(target / VERSION / "model.onnx"))
        (target / "config.pbtxt").write_text(pbtxt)
        result.written[name] = target
    return result
