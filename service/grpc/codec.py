"""Tensors in and out of gRPC ``ModelInferRequest``/``ModelInferResponse`` messages.

The same checks as the HTTP codec (``core.tensors``: input and output names, shape limits
before any allocation), for gRPC's two encodings: typed ``contents`` (FP32 and FP64
only: protobuf has no half-precision field) and ``raw_input_contents``, whose bytes become a
NumPy view without a copy. Answers always carry ``raw_output_contents``, one entry per output
(empty for one in shared memory), as Triton's do.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

from normserve.kernels.dtypes import datatype_name

from ..core.calls import InferCall, OutputRequest
from ..core.errors import InvalidInput
from ..core.protocol import OUTPUT, VERSION
from ..core.tensors import (
    Limits,
    Selected,
    check_input_names,
    check_output_name,
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
    """A ``ModelInferRequest`` as an ``InferCall``, or a 400 naming the field at fault.
    (Which inputs and outputs a model has is the core's to check: ``Model.bind``.)"""
    inputs = req.inputs
    single = len(inputs) == 1
    if not single:
        check_input_names([t.name for t in inputs])
    raws = req.raw_input_contents
    if single and raws and len(raws) != 1:
        raise InvalidInput(f"raw_input_contents: {len(raws)} entries for 1 input")
    array, used = _input(inputs[0], 0, raws, single, limits, shm, "inputs[0]")
    more: tuple[tuple[str, np.ndarray, str], ...] = ()
    if not single:
        more_list = []
        for i, spec in enumerate(inputs[1:], start=1):
            field = f"inputs[{i}]"
            other, n = _input(spec, used, raws, False, limits, shm, field)
            more_list.append((spec.name, other, field))
            used += n
        if used != len(raws):
            raise InvalidInput(f"raw_input_contents: {len(raws)} entries for the {used} "
                               "inputs that have neither contents nor a shared memory region")
        more = tuple(more_list)
    region = region_params = None
    outputs = None
    if req.outputs:
        outputs, seen = [], set()
        for i, out in enumerate(req.outputs):
            field = f"outputs[{i}]"
            check_output_name(out.name, seen, field)
            r, p = shm.output_region(parameters(out.parameters), field)
            outputs.append(OutputRequest(out.name, field, True, r, p))
        if len(outputs) == 1:
            region, region_params = outputs[0].region, outputs[0].params
    params = req.parameters
    timeout = parameter(params["timeout"]) if params and "timeout" in params else None
    return InferCall(req.id or None, inputs[0].name, array, True, timeout_param(timeout),
                     req.model_name, req.model_version or None, "inputs[0]", region,
                     region_params, more, outputs)


def _input(spec: service_pb2.ModelInferRequest.InferInputTensor, index: int, raws: Any,
           single: bool, limits: Limits, shm: SharedMemory, field: str
           ) -> tuple[np.ndarray, int]:
    """An input's array, from shared memory, its typed ``contents`` or the next entry of
    ``raw_input_contents`` (``index``: the entries the inputs before it took; as
    tritonclient sends them, one per input that has neither shared memory nor contents),
    and how many entries it took. ``single``: the request's only input."""
    dtype = dtype_of(spec.datatype, f"{field}.datatype")
    shape = spec.shape[:]  # a list (a slice of the repeated field: 3x quicker than list())
    count = check_shape(shape, limits, f"{field}.shape")
    nbytes = count * dtype.itemsize
    has_contents = spec.HasField("contents")
    params = spec.parameters
    array = shm.input_array(parameters(params), dtype, shape, count, field) if params else None
    if array is not None:
        if has_contents or (single and raws):
            raise InvalidInput(f"{field}: give a shared memory region or data, not both")
        return array, 0
    if has_contents:
        if single and raws:
            raise InvalidInput(f"{field}: give contents or raw_input_contents, not both")
        return _typed(spec, shape, dtype, count, field), 0
    if index >= len(raws):
        if not raws:
            raise InvalidInput(f"{field}: no data (give contents or raw_input_contents)")
        raise InvalidInput(f"raw_input_contents: {len(raws)} entries, too few for the inputs "
                           f"(none left for {field})")
    raw = raws[index]
    if len(raw) != nbytes:
        raise InvalidInput(f"raw_input_contents[{index}]: {len(raw)} bytes, but shape {shape} "
                           f"of {spec.datatype} needs {nbytes}")
    return np.ndarray(shape, dtype, raw), 1  # a read-only view of the bytes, no copy


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


def encode_response(model: str, call: InferCall, outs: np.ndarray | tuple[np.ndarray, ...],
                    selected: Selected = ((0, None),), names: tuple[str, ...] = (OUTPUT,),
                    response: service_pb2.ModelInferResponse | None = None
                    ) -> service_pb2.ModelInferResponse:
    """The answer: each selected output's metadata and its entry of
    ``raw_output_contents``, one per output in the outputs' order, as Triton answers: an
    output written to shared memory gets an empty entry and no parameters (Triton's C++
    client, perf_analyzer's, reads entry i for output i and fails on a missing one;
    tritonclient's Python one finds each output's bytes at its own index). ``outs``: every
    output of the model (``names``, in order; one bare array for a model of one).
    ``response``: an empty message to fill (a stream's reply holds one: filled in place,
    its bytes are not copied again), else a new one."""
    if type(outs) is np.ndarray:
        outs = (outs,)
    if response is None:
        response = service_pb2.ModelInferResponse()
    response.model_name = model
    response.model_version = VERSION
    response.id = call.request_id or ""
    raws = response.raw_output_contents
    for index, spec in selected:
        out = outs[index]
        response.outputs.add(name=names[index], datatype=datatype_name(out.dtype),
                             shape=out.shape)
        params = spec.params if spec is not None else call.output_params if index == 0 \
            else None
        # params: the output is in the client's shared memory already.
        raws.append(b"" if params is not None else np.ascontiguousarray(out).tobytes())
    return response
