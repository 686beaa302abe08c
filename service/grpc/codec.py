"""Tensors in and out of gRPC ``ModelInferRequest``/``ModelInferResponse`` messages.

The same checks as the HTTP codec (``core.tensors``: one input, outputs named ``output``, shape
limits before any allocation), for gRPC's two encodings: typed ``contents`` (FP32 and FP64
only: protobuf has no half-precision field) and ``raw_input_contents``, whose bytes become a
NumPy view without a copy. Answers always carry ``raw_output_contents``, as Triton's do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from normserve.kernels.dtypes import datatype_name

from ..core.calls import InferCall
from ..core.errors import InvalidInput
from ..core.protocol import OUTPUT, VERSION
from ..core.tensors import (
    Limits,
    check_one_input,
    check_outputs,
    check_shape,
    dtype_of,
    timeout_param,
)
from ..extensions.shared_memory import SharedMemory

#: The typed ``contents`` field of each datatype that has one.
CONTENTS_FIELD = {"FP32": "fp32_contents", "FP64": "fp64_contents"}


def parameter(value: service_pb2.InferParameter) -> Any:
    """An ``InferParameter`` as a Python value (None when unset)."""
    which = value.WhichOneof("parameter_choice")
    return None if which is None else getattr(value, which)


def parameters(params: Any) -> dict[str, Any]:
    """A protobuf ``parameters`` map as a dict of Python values."""
    return {k: parameter(v) for k, v in params.items()}


def decode_request(req: service_pb2.ModelInferRequest, limits: Limits,
                   shm: SharedMemory) -> InferCall:
    """A ``ModelInferRequest`` as an ``InferCall``, or a 400 naming the field at fault."""
    check_one_input([t.name for t in req.inputs])
    spec = req.inputs[0]
    field = "inputs[0]"
    dtype = dtype_of(spec.datatype, f"{field}.datatype")
    shape = list(spec.shape)
    count = check_shape(shape, limits, f"{field}.shape")
    nbytes = count * dtype.itemsize
    has_contents = spec.HasField("contents")
    array = shm.input_array(parameters(spec.parameters), dtype, shape, count, field)
    if array is not None:
        if has_contents or req.raw_input_contents:
            raise InvalidInput(f"{field}: give a shared memory region or data, not both")
    elif req.raw_input_contents:
        if len(req.raw_input_contents) != len(req.inputs):
            raise InvalidInput(f"raw_input_contents: {len(req.raw_input_contents)} entries "
                               f"for {len(req.inputs)} input")
        if has_contents:
            raise InvalidInput(f"{field}: give contents or raw_input_contents, not both")
        raw = req.raw_input_contents[0]
        if len(raw) != nbytes:
            raise InvalidInput(f"raw_input_contents[0]: {len(raw)} bytes, but shape {shape} "
                               f"of {spec.datatype} needs {nbytes}")
        array = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)
    elif has_contents:
        array = _typed(spec, shape, dtype, count, field)
    else:
        raise InvalidInput(f"{field}: no data (give contents or raw_input_contents)")
    check_outputs([o.name for o in req.outputs])
    region = region_params = None
    for i, out in enumerate(req.outputs):
        region, region_params = shm.output_region(parameters(out.parameters), f"outputs[{i}]")
    timeout = parameter(req.parameters["timeout"]) if "timeout" in req.parameters else None
    return InferCall(req.id or None, spec.name, array, True, timeout_param(timeout),
                     req.model_name, req.model_version or None, field, region, region_params)


def _typed(spec: service_pb2.ModelInferRequest.InferInputTensor, shape: list[int],
           dtype: np.dtype, count: int, field: str) -> np.ndarray:
    name = CONTENTS_FIELD.get(spec.datatype)
    if name is None:
        raise InvalidInput(f"{field}.contents: {spec.datatype} has no typed contents field; "
                           "send it in raw_input_contents")
    others = [f.name for f, _ in spec.contents.ListFields() if f.name != name]
    if others:
        raise InvalidInput(f"{field}.contents.{others[0]}: wrong field for {spec.datatype} "
                           f"data (use {name})")
    values = getattr(spec.contents, name)
    if len(values) != count:
        raise InvalidInput(f"{field}.contents.{name}: has {len(values)} values but the "
                           f"shape {shape} needs {count}")
    return np.array(values, dtype=dtype).reshape(shape)


def encode_response(model: str, call: InferCall, out: np.ndarray
                    ) -> service_pb2.ModelInferResponse:
    """The answer: the output's metadata and its bytes in ``raw_output_contents`` (or, for
    an output written to shared memory, the region's parameters and no bytes)."""
    tensor = service_pb2.ModelInferResponse.InferOutputTensor(
        name=OUTPUT, datatype=datatype_name(out.dtype), shape=out.shape)
    response = service_pb2.ModelInferResponse(model_name=model, model_version=VERSION,
                                              id=call.request_id or "", outputs=[tensor])
    if call.output_params is None:
        response.raw_output_contents.append(np.ascontiguousarray(out).tobytes())
        return response
    params = response.outputs[0].parameters  # the message's copy of ``tensor``
    for key, value in {**call.output_params, "shared_memory_byte_size": out.nbytes}.items():
        if isinstance(value, str):
            params[key].string_param = value
        else:
            params[key].int64_param = value
    return response
