"""Tensors in and out of the Open Inference Protocol: JSON ``data`` and the binary extension.

Decoding checks the declared shape against the limits and against the bytes or values actually
sent *before* anything of the declared size is allocated. Binary inputs become NumPy views of
the request body (no copy); the batcher's copy into its batch buffer is the only one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from normserve.kernels.dtypes import DATATYPES, datatype_name

from .errors import ApiError
from .schemas import InferenceRequest, Tensor, validate
from .shared_memory import SharedMemory

HEADER_LENGTH = "inference-header-content-length"
SUPPORTED = ", ".join(DATATYPES)


@dataclass(frozen=True)
class Limits:
    max_tensor_elements: int
    max_rank: int = 8


@dataclass
class InferCall:
    """A decoded inference request, from either transport: its one input and how the client
    wants the answer."""

    request_id: str | None
    input_name: str
    array: np.ndarray
    binary_output: bool
    timeout_s: float | None
    model_name: str | None = None  # as the body names it (kserve's clients send it)
    model_version: str | None = None
    field: str = "inputs[0]"  # where the input sits in the request, for error messages
    #: The shared-memory bytes the output goes to, and the client's parameters naming them
    #: (echoed in the answer), when the client asked for that.
    output_region: memoryview | None = None
    output_params: dict[str, Any] | None = None


def shm_input(shm: SharedMemory, params: dict[str, Any], dtype: np.dtype, shape: list[int],
              count: int, field: str) -> np.ndarray | None:
    """The input a tensor's ``shared_memory_*`` parameters name, as a view of the mapped
    region (no copy), or None when it names no region."""
    view = shm.view(params, field)
    if view is None:
        return None
    if len(view) != count * dtype.itemsize:
        raise ApiError(400, f"{field}.parameters.shared_memory_byte_size: {len(view)} bytes, "
                            f"but shape {shape} of {datatype_name(dtype)} needs "
                            f"{count * dtype.itemsize}")
    return np.frombuffer(view, dtype=dtype, count=count).reshape(shape)


def shm_output(shm: SharedMemory, params: dict[str, Any] | None, field: str
               ) -> tuple[memoryview | None, dict[str, Any] | None]:
    """The region an output is to be written to, and the parameters that named it."""
    view = shm.view(params or {}, field)
    if view is None:
        return None, None
    return view, {k: v for k, v in params.items() if k.startswith("shared_memory_")}


def dtype_of(datatype: str, field: str) -> np.dtype:
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise ApiError(400, f"{field}: {datatype!r} is not supported; use one of {SUPPORTED}")
    return dtype


def check_shape(shape: list[int], limits: Limits, field: str) -> int:
    """The element count of a declared shape, refusing negative dims, high ranks and huge sizes."""
    if len(shape) > limits.max_rank:
        raise ApiError(400, f"{field}: rank {len(shape)} is above the limit of {limits.max_rank}")
    for i, d in enumerate(shape):
        if d < 0:
            raise ApiError(400, f"{field}[{i}]: must be >= 0, got {d}")
    count = math.prod(shape)
    if count > limits.max_tensor_elements:
        raise ApiError(413, f"{field}: {count} elements are above the limit of "
                            f"{limits.max_tensor_elements}")
    return count


def json_array(data: Any, shape: list[int], dtype: np.dtype, count: int, field: str) -> np.ndarray:
    """JSON values (flat or nested, row-major) as an array of ``shape``; finite numbers only."""
    if isinstance(data, list) and data and not isinstance(data[0], list) and len(data) != count:
        raise ApiError(400, f"{field}: has {len(data)} values but the shape {shape} needs {count}")
    try:
        raw = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(400, f"{field}: must be numbers in (nested) lists of equal length") from None
    if raw.size != count:
        raise ApiError(400, f"{field}: has {raw.size} values but the shape {shape} needs {count}")
    if raw.size and raw.dtype.kind not in "iuf":
        raise ApiError(400, f"{field}: values must be numbers, got {raw.dtype.kind!r}-kind data")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = raw.astype(dtype).reshape(shape)
    if not np.isfinite(arr).all():
        raise ApiError(400, f"{field}: a value is out of range for {datatype_name(dtype)}")
    return arr


def decode_tensor(tensor: Tensor, limits: Limits, field: str) -> np.ndarray:
    """A v1 JSON tensor ``{"shape", "datatype", "data"}`` as an array."""
    dtype = dtype_of(tensor.datatype, f"{field}.datatype")
    count = check_shape(tensor.shape, limits, f"{field}.shape")
    return json_array(tensor.data, tensor.shape, dtype, count, f"{field}.data")


def _split(body: bytes, header_length: str | None) -> tuple[memoryview, memoryview]:
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view):]
    header_length = header_length.strip()
    if not (header_length.isascii() and header_length.isdigit()):  # not "²": int() refuses it
        raise ApiError(400, f"Inference-Header-Content-Length: {header_length!r} is not a "
                            "non-negative integer")
    n = int(header_length)
    if n > len(view):
        raise ApiError(400, f"Inference-Header-Content-Length: {n} is beyond the body's "
                            f"{len(view)} bytes")
    return view[:n], view[n:]


def _flag(params: dict[str, Any] | None, name: str, field: str) -> bool | None:
    if not params or name not in params:
        return None
    value = params[name]
    if not isinstance(value, bool):
        raise ApiError(400, f"{field}.{name}: must be true or false")
    return value


def decode_infer(body: bytes, header_length: str | None, limits: Limits,
                 shm: SharedMemory) -> InferCall:
    """Parse an infer body (JSON, or JSON header + binary section) into an ``InferCall``."""
    head, binary = _split(body, header_length)
    try:
        parsed = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"body: not valid JSON ({exc})") from None
    req: InferenceRequest = validate(InferenceRequest, parsed)
    check_one_input([i.name for i in req.inputs])
    spec = req.inputs[0]
    field = "inputs[0]"
    dtype = dtype_of(spec.datatype, f"{field}.datatype")
    count = check_shape(spec.shape, limits, f"{field}.shape")
    size = (spec.parameters or {}).get("binary_data_size")
    array = shm_input(shm, spec.parameters or {}, dtype, spec.shape, count, field)
    if array is not None:
        if spec.data is not None or size is not None or len(binary):
            raise ApiError(400, f"{field}: give a shared memory region or data, not both")
    elif size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ApiError(400, f"{field}.parameters.binary_data_size: must be an integer >= 0")
        if spec.data is not None:
            raise ApiError(400, f"{field}: give data or parameters.binary_data_size, not both")
        if size != count * dtype.itemsize:
            raise ApiError(400, f"{field}.parameters.binary_data_size: {size} bytes, but shape "
                                f"{spec.shape} of {spec.datatype} needs {count * dtype.itemsize}")
        if size != len(binary):
            raise ApiError(400, f"{field}.parameters.binary_data_size: {size} bytes, but the "
                                f"binary section has {len(binary)}")
        array = np.frombuffer(binary, dtype=dtype, count=count).reshape(spec.shape)
    else:
        if spec.data is None:
            raise ApiError(400, f"{field}.data: missing (or give parameters.binary_data_size)")
        if len(binary):
            raise ApiError(400, f"body: {len(binary)} bytes of binary data that no input claims")
        array = json_array(spec.data, spec.shape, dtype, count, f"{field}.data")
    binary_out = _flag(req.parameters, "binary_data_output", "parameters") or False
    check_outputs([out.name for out in req.outputs or ()])
    region = region_params = None
    for i, out in enumerate(req.outputs or ()):
        flag = _flag(out.parameters, "binary_data", f"outputs[{i}].parameters")
        if flag is not None:
            binary_out = flag
        region, region_params = shm_output(shm, out.parameters, f"outputs[{i}]")
    return InferCall(req.id, spec.name, array, binary_out,
                     timeout_param((req.parameters or {}).get("timeout")),
                     req.model_name, req.model_version, field, region, region_params)


def check_one_input(names: list[str]) -> None:
    """Every model takes one input: a 400 for none, several, or duplicates."""
    if len(names) != 1:
        if len(set(names)) != len(names):
            raise ApiError(400, "inputs: duplicate input names")
        raise ApiError(400, f"inputs: exactly one input is required, got {len(names)}")


def check_outputs(names: list[str]) -> None:
    """Requested outputs may only name ``output``, once."""
    seen = set()
    for i, name in enumerate(names):
        if name != "output":
            raise ApiError(400, f"outputs[{i}].name: unknown output {name!r}; the only "
                                "output is 'output'")
        if name in seen:
            raise ApiError(400, f"outputs[{i}].name: duplicate output {name!r}")
        seen.add(name)


def timeout_param(timeout: Any) -> float | None:
    """The ``timeout`` request parameter (microseconds, Triton's) in seconds."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                or timeout <= 0):
        raise ApiError(400, "parameters.timeout: must be a positive integer (microseconds)")
    return None if timeout is None else timeout / 1e6


def encode_infer(model: str, call: InferCall,
                 out: np.ndarray) -> tuple[list[bytes | memoryview], dict]:
    """The response body parts and headers: JSON data, or a JSON header + the raw bytes."""
    datatype = datatype_name(out.dtype)
    head: dict[str, Any] = {"model_name": model, "model_version": "1"}
    if call.request_id is not None:
        head["id"] = call.request_id
    output: dict[str, Any] = {"name": "output", "datatype": datatype, "shape": list(out.shape)}
    head["outputs"] = [output]
    if call.output_params is not None:  # the data is in the client's shared memory already
        output["parameters"] = {**call.output_params, "shared_memory_byte_size": out.nbytes}
        return [orjson.dumps(head)], {"content-type": "application/json"}
    if call.binary_output:
        # A view, not a copy: it keeps the (pooled) batch output alive until it is sent.
        raw = memoryview(np.ascontiguousarray(out).reshape(-1).view(np.uint8))
        output["parameters"] = {"binary_data_size": len(raw)}
        header = orjson.dumps(head)
        return [header, raw], {"inference-header-content-length": str(len(header)),
                               "content-type": "application/octet-stream"}
    output["data"] = json_values(out)
    return [orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY)], {
        "content-type": "application/json"}


def json_values(out: np.ndarray) -> np.ndarray:
    """A flat array orjson serialises natively (bfloat16 widened to float32)."""
    flat = np.ascontiguousarray(out).reshape(-1)
    return flat if flat.dtype in (np.float16, np.float32, np.float64) else flat.astype(np.float32)


def tensor_json(out: np.ndarray) -> dict[str, Any]:
    """A v1 JSON tensor of an array."""
    return {"shape": list(out.shape), "datatype": datatype_name(out.dtype),
            "data": json_values(out)}
