"""``to_onnx``: a prepared layer as a checked ONNX model with a dynamic batch axis.

The graph computes in FP32 whatever its I/O dtype: an FP16 model casts its input up and its
output down once, exactly as the kernels widen half precision, so statistics stay in FP32
(or float64) and nothing overflows that the kernel does not (an FP16 sum of squares would).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from .builders import FORMS, builder_for
from .errors import ExportError
from .graph import FLOAT, FLOAT16, GraphBuilder
from .opsets import check_opset

INPUT_NAME = "input"
OUTPUT_NAME = "output"
DTYPES: dict[str, int] = {"fp32": FLOAT, "fp16": FLOAT16}
NUMPY_DTYPES: dict[str, np.dtype] = {"fp32": np.dtype(np.float32), "fp16": np.dtype(np.float16)}


def sample_dims(layer, input_shape: Sequence[int] | None = None) -> tuple[int, ...]:
    """The per-sample input dims to export (``-1`` free): given, or the layer's own."""
    dims = input_shape if input_shape is not None else layer.sample_shape
    if dims is None:
        raise ExportError(f"{layer.kind} does not fix its per-sample shape: pass input_shape "
                          f"(e.g. [C, -1, -1]; -1 marks a free dimension)")
    dims = tuple(int(d) for d in dims)
    if any(d == 0 or d < -1 for d in dims):
        raise ExportError(f"input_shape must hold positive sizes or -1, got {list(dims)}")
    try:  # the layer must accept this shape (free dims tried at size 1)
        layer.output_shape((1, *(1 if d == -1 else d for d in dims)))
    except ValueError as exc:
        raise ExportError(f"input_shape {list(dims)} does not fit {layer.kind}: {exc}") from None
    return dims


def _value_info(name: str, elem_type: int, dims: tuple[int, ...]) -> onnx.ValueInfoProto:
    shape = ["batch"] + [f"{name}_d{i + 1}" if d == -1 else d for i, d in enumerate(dims)]
    return helper.make_tensor_value_info(name, elem_type, shape)


def to_onnx(layer, opset: int | None = None, *, dtype: str = "fp32", form: str = "auto",
            input_shape: Sequence[int] | None = None, check: bool = True,
            ort_fused: bool = False) -> onnx.ModelProto:
    """The layer as an ONNX model from its ``input_names`` to its ``output_names`` (``input``
    -> ``output`` for a one-input kind), batch axis dynamic.

    ``form`` picks native operators or the stable two-pass decomposition (see
    ``export.builders``); ``ort_fused`` emits ONNX Runtime's fused ``com.microsoft``
    operators where a kind has one (the fused norms' SkipLayerNormalization family): such a
    graph runs in ONNX Runtime only. ``check`` runs the full checker and strict shape
    inference.
    """
    opset = check_opset(opset, layer.kind)
    if dtype not in DTYPES:
        raise ExportError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if form not in FORMS:
        raise ExportError(f"form must be one of {list(FORMS)}, got {form!r}")
    dims = sample_dims(layer, input_shape)
    io_type = DTYPES[dtype]

    g = GraphBuilder(opset)
    g.io_type, g.ort_fused = io_type, ort_fused
    xs = [name if io_type == FLOAT else g.cast(name, FLOAT, f"{name}32")
          for name in layer.input_names]
    ys = builder_for(layer.kind)(g, layer, xs[0] if len(xs) == 1 else tuple(xs),
                                 len(dims) + 1, form)
    ys = (ys,) if isinstance(ys, str) else tuple(ys)
    for y, name in zip(ys, layer.output_names, strict=True):
        g.nodes.append(helper.make_node("Cast" if io_type != FLOAT else "Identity", [y],
                                        [name], name=f"{name}_node",
                                        **({"to": io_type} if io_type != FLOAT else {})))
    out_dims = layer.sample_output_shape(dims)
    graph = helper.make_graph(
        g.nodes, f"normserve_{layer.kind}",
        [_value_info(name, io_type, dims) for name in layer.input_names],
        [_value_info(name, io_type, out_dims) for name in layer.output_names],
        initializer=g.initializers,
    )
    opset_ids = [helper.make_opsetid("", opset),
                 *(helper.make_opsetid(d, 1) for d in sorted(g.domains))]
    model = helper.make_model(graph, opset_imports=opset_ids, producer_name="normserve",
                              ir_version=helper.find_min_ir_version_for(opset_ids, True))
    model.doc_string = f"normserve {layer.kind} ({form} form, {dtype})"
    helper.set_model_props(model, {"kind": layer.kind, "form": form, "dtype": dtype,
                                   "graph_form": "+".join(sorted(g.used_forms)),
                                   "ort_fused": json.dumps(bool(g.domains)),
                                   "hyper": json.dumps(layer.hyper, default=str)})
    if check:
        check_model(model)
    return model


def check_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """The full checker, then strict shape inference; returns the inferred model."""
    try:
        onnx.checker.check_model(model, full_check=True)
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True,
                                                 data_prop=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise ExportError(f"the exported graph fails onnx's checker: {exc}") from exc
