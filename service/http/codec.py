"""Tensors in and out of the Open Inference Protocol: JSON ``data`` and the binary extension.

Decoding checks the declared shape against the limits and against the bytes or values actually
sent *before* anything of the declared size is allocated. Binary inputs become NumPy views of
the request body (no copy); the batcher's copy into its batch buffer is the only one. JSON
``data`` of numbers in (nested) lists is read by simdjson straight from the text into an array
(no Python float per value); anything else takes orjson and NumPy, which word the errors.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import orjson
import simdjson

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
from .schemas import InferenceRequest, Tensor, TensorInput, validate

HEADER_LENGTH = "inference-header-content-length"


def json_array(data: Any, shape: list[int], dtype: np.dtype, count: int, field: str) -> np.ndarray:
    """JSON values (flat or nested, row-major) as an array of ``shape``; finite numbers only."""
    if isinstance(data, list) and data and not isinstance(data[0], list) and len(data) != count:
        raise InvalidInput(f"{field}: has {len(data)} values but the shape {shape} needs {count}")
    try:
        raw = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInput(f"{field}: must be numbers in (nested) lists of equal length") from None
    if raw.size and raw.dtype.kind not in "iuf":
        raise InvalidInput(f"{field}: values must be numbers, got {raw.dtype.kind!r}-kind data")
    if raw.size and _has_bool(data):  # beside numbers, NumPy reads true/false as 1/0
        raise InvalidInput(f"{field}: values must be numbers, got true or false")
    return numbers_array(raw, shape, dtype, count, field)


def _has_bool(data: list) -> bool:
    """Whether nested lists hold true or false (only called on what NumPy took for a numeric
    array, so the nesting is no deeper than NumPy's dimensions)."""
    return any(v is True or v is False or (type(v) is list and _has_bool(v)) for v in data)


def numbers_array(raw: np.ndarray, shape: list[int], dtype: np.dtype, count: int,
                  field: str) -> np.ndarray:
    """Numbers already parsed (any real dtype) as a new array of ``shape`` and ``dtype``,
    refusing a wrong count and values out of the dtype's range."""
    if raw.size != count:
        raise InvalidInput(f"{field}: has {raw.size} values but the shape {shape} needs {count}")
    with np.errstate(over="ignore", invalid="ignore"):
        arr = raw.astype(dtype).reshape(shape)
    if not np.isfinite(arr).all():
        raise InvalidInput(f"{field}: a value is out of range for {datatype_name(dtype)}")
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
        raise InvalidInput(f"Inference-Header-Content-Length: {header_length!r} is not a "
                           "non-negative integer")
    n = int(header_length)
    if n > len(view):
        raise InvalidInput(f"Inference-Header-Content-Length: {n} is beyond the body's "
                           f"{len(view)} bytes")
    return view[:n], view[n:]


def _flag(params: dict[str, Any] | None, name: str, field: str) -> bool | None:
    if not params or name not in params:
        return None
    value = params[name]
    if not isinstance(value, bool):
        raise InvalidInput(f"{field}.{name}: must be true or false")
    return value


_BOM = b"\xef\xbb\xbf"
_OPEN = ord("[")
_MAX_NESTING = 32


def _loads(head: memoryview | bytes) -> Any:
    """The JSON header by orjson (the general way), or a 400 naming the syntax error."""
    try:
        return orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"body: not valid JSON ({exc})") from None


def _simd_head(head: memoryview) -> tuple[dict[str, Any], np.ndarray] | None:
    """simdjson's reading of a one-input request whose data is numbers in (nested) lists of
    equal length: the numbers go from the text into an array in C, faster than orjson +
    ``np.array`` (bench-results/notes.md). None for anything else (invalid JSON, a BOM, which orjson
    refuses, repeated keys, ragged lists, non-numbers), left to the general way, which words
    the errors."""
    if bytes(head[:3]) == _BOM:
        return None
    try:
        doc = simdjson.Parser().parse(head)  # a new one: thread-safe, as fast as reusing one
        if not isinstance(doc, simdjson.Object):
            return None
        top = _fields(doc, "inputs")
        inputs = top and top.get("inputs")
        if not isinstance(inputs, simdjson.Array) or len(inputs) != 1:
            return None
        spec = inputs[0]
        fields = _fields(spec, "data") if isinstance(spec, simdjson.Object) else None
        data = fields.pop("data", None) if fields else None
        nesting = _nesting(data, 0) if isinstance(data, simdjson.Array) else None
        if nesting is None:
            return None
        values = np.frombuffer(data.as_buffer(of_type="d"), dtype=np.float64)  # numbers only
    except (ValueError, TypeError, RuntimeError):  # simdjson's refusals: the general way words them
        return None
    top["inputs"] = [fields]
    # _nesting looked at the first item of each innermost list only; as_buffer would flatten
    # a list further in. Every list in the text opens with a "[" (strings may hold more), so
    # there is none further in when the text has no more "[" than the lists seen.
    if np.count_nonzero(np.frombuffer(head, np.uint8) == _OPEN) != _lists(top) + nesting[1]:
        return None
    return top, values


def _nesting(array: simdjson.Array, depth: int) -> tuple[tuple[int, ...], int] | None:
    """The shape of a nesting of lists and how many lists it holds (1 when flat), or None
    when sibling lists differ in shape or it is deeper than NumPy's dimensions go."""
    if not len(array) or not isinstance(array[0], simdjson.Array):
        return (len(array),), 1
    if depth == _MAX_NESTING:
        return None
    shape, lists = None, 1
    for item in array:
        sub = _nesting(item, depth + 1) if isinstance(item, simdjson.Array) else None
        if sub is None or shape not in (None, sub[0]):
            return None
        shape, lists = sub[0], lists + sub[1]
    return (len(array), *shape), lists


def _fields(obj: simdjson.Object, keep: str) -> dict[str, Any] | None:
    """An object's members as Python values, except ``keep``, left as simdjson's (unconverted);
    None when a key repeats (orjson keeps the last, simdjson's lookup the first)."""
    keys = list(obj.keys())
    if len(set(keys)) != len(keys):
        return None
    out: dict[str, Any] = {}
    for key in keys:
        value = obj[key]
        if key != keep and isinstance(value, simdjson.Object):
            value = value.as_dict()
        elif key != keep and isinstance(value, simdjson.Array):
            value = value.as_list()
        out[key] = value
    return out


def _lists(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_lists(v) for v in value.values())
    if isinstance(value, list):
        return 1 + sum(_lists(v) for v in value)
    return 0


HEADER_CACHE_BYTES = 1024


@functools.lru_cache(maxsize=256)
def _small_header(head: bytes) -> InferenceRequest:
    """A small header (binary or shared-memory data), validated once: a client sends the same
    one (same shapes and parameters) request after request, and pydantic's validation cost
    more than the rest of decoding. Shared, so read-only for its users."""
    return validate(InferenceRequest, _loads(head))


def decode_infer(body: bytes, header_length: str | None, limits: Limits,
                 shm: SharedMemory) -> InferCall:
    """Parse an infer body (JSON, or JSON header + binary section) into the one ``InferCall``
    the core runs, in one pass: the header, the inputs, the outputs asked for, the timeout.
    (Which inputs and outputs a model has is the core's to check: ``Model.bind``.)"""
    head, binary = _split(body, header_length)
    req, values = _header(head, json_data=header_length is None and b'"data"' in body)
    inputs = req.inputs
    check_input_names([i.name for i in inputs])
    single = len(inputs) == 1
    array, used = _input(inputs[0], values, binary, 0, single, limits, shm, "inputs[0]")
    more: tuple[tuple[str, np.ndarray, str], ...] = ()
    if not single:
        more_list = []
        for i, spec in enumerate(inputs[1:], start=1):
            field = f"inputs[{i}]"
            other, n = _input(spec, None, binary, used, False, limits, shm, field)
            more_list.append((spec.name, other, field))
            used += n
        if used != len(binary):
            raise InvalidInput(f"body: {len(binary) - used} bytes of binary data that no "
                               "input claims (the inputs' binary_data_size add up to "
                               f"{used})")
        more = tuple(more_list)
    binary_out, region, region_params, outputs = _outputs(req, shm)
    return InferCall(req.id, inputs[0].name, array, binary_out,
                     timeout_param((req.parameters or {}).get("timeout")),
                     req.model_name, req.model_version, "inputs[0]", region, region_params,
                     more, outputs)


def _header(head: memoryview, json_data: bool) -> tuple[InferenceRequest, np.ndarray | None]:
    """The validated JSON header, and its input's data as float64 when simdjson read it
    (then left out of the header; None: any data stays in the header for ``json_array``).
    A body that may carry JSON data tries simdjson's way first; both ways accept and refuse
    the same bodies."""
    if not json_data and len(head) <= HEADER_CACHE_BYTES:
        return _small_header(bytes(head)), None
    fast = _simd_head(head) if json_data else None
    parsed, values = fast if fast is not None else (_loads(head), None)
    return validate(InferenceRequest, parsed), values


def _input(spec: TensorInput, values: np.ndarray | None, binary: memoryview, offset: int,
           single: bool, limits: Limits, shm: SharedMemory, field: str
           ) -> tuple[np.ndarray, int]:
    """An input's array, from shared memory, the binary section (its bytes from
    ``offset``) or JSON data, and how many bytes of the binary section it took: its declared
    datatype and shape checked before anything of that size is made. ``single``: the
    request's only input, which must take the whole binary section."""
    dtype = dtype_of(spec.datatype, f"{field}.datatype")
    count = check_shape(spec.shape, limits, f"{field}.shape")
    size = (spec.parameters or {}).get("binary_data_size")
    has_data = spec.data is not None or values is not None
    rest = binary[offset:] if offset else binary
    array = shm.input_array(spec.parameters or {}, dtype, spec.shape, count, field)
    if array is not None:
        if has_data or size is not None or (single and len(rest)):
            raise InvalidInput(f"{field}: give a shared memory region or data, not both")
        return array, 0
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidInput(f"{field}.parameters.binary_data_size: must be an integer >= 0")
        if has_data:
            raise InvalidInput(f"{field}: give data or parameters.binary_data_size, not both")
        if size != count * dtype.itemsize:
            raise InvalidInput(f"{field}.parameters.binary_data_size: {size} bytes, but shape "
                               f"{spec.shape} of {spec.datatype} needs {count * dtype.itemsize}")
        if size != len(rest) if single else size > len(rest):
            raise InvalidInput(f"{field}.parameters.binary_data_size: {size} bytes, but the "
                               f"binary section has {len(rest)}"
                               + ("" if single else " left"))
        return np.frombuffer(rest, dtype=dtype, count=count).reshape(spec.shape), size
    if not has_data:
        raise InvalidInput(f"{field}.data: missing (or give parameters.binary_data_size)")
    if single and len(rest):
        raise InvalidInput(f"body: {len(rest)} bytes of binary data that no input claims")
    if values is not None:
        return numbers_array(values, spec.shape, dtype, count, f"{field}.data"), 0
    return json_array(spec.data, spec.shape, dtype, count, f"{field}.data"), 0


def _outputs(req: InferenceRequest, shm: SharedMemory
             ) -> tuple[bool, memoryview | None, dict[str, Any] | None,
                        list[OutputRequest] | None]:
    """How the client wants the answer: binary or JSON (the request's
    ``binary_data_output``, overridden by an output's ``binary_data``), and the shared-memory
    region it goes to (with the parameters that named it), if any, of the one output named;
    and every output named (None: none), each with its own flag and region."""
    binary_out = _flag(req.parameters, "binary_data_output", "parameters") or False
    if not req.outputs:
        return binary_out, None, None, None
    outputs, seen = [], set()
    for i, out in enumerate(req.outputs):
        field = f"outputs[{i}]"
        check_output_name(out.name, seen, field)
        flag = _flag(out.parameters, "binary_data", f"{field}.parameters")
        region, region_params = shm.output_region(out.parameters, field)
        outputs.append(OutputRequest(out.name, field, flag, region, region_params))
    if len(outputs) == 1:
        only = outputs[0]
        if only.binary is not None:
            binary_out = only.binary
        return binary_out, only.region, only.params, outputs
    return binary_out, None, None, outputs


def encode_infer(model: str, call: InferCall, outs: np.ndarray | tuple[np.ndarray, ...],
                 selected: Selected = ((0, None),), names: tuple[str, ...] = (OUTPUT,)
                 ) -> tuple[list[bytes | memoryview], dict]:
    """The response body parts and headers: JSON data, or a JSON header + the raw bytes
    (each output as it was asked for: the binary extension allows a mix).

    ``outs``: every output of the model (``names``, in order; one bare array for a model
    of one), of which the ``selected`` ones are answered (``Model.select``)."""
    if type(outs) is np.ndarray:
        outs = (outs,)
    head: dict[str, Any] = {"model_name": model, "model_version": VERSION}
    if call.request_id is not None:
        head["id"] = call.request_id
    outputs: list[dict[str, Any]] = []
    head["outputs"] = outputs
    raws: list[bytes | memoryview] | None = None
    numpy = False
    for index, spec in selected:
        out = outs[index]
        output: dict[str, Any] = {"name": names[index], "datatype": datatype_name(out.dtype),
                                  "shape": list(out.shape)}
        outputs.append(output)
        params = spec.params if spec is not None else call.output_params if index == 0 \
            else None
        if params is not None:
            # The data is in the client's shared memory already. As Triton answers: name,
            # datatype and shape only, no parameters (Triton's C++ client takes an output
            # that has parameters for binary data and requires binary_data_size in them).
            continue
        if spec.binary if spec is not None and spec.binary is not None \
                else call.binary_output:
            # A view, not a copy: it keeps the (pooled) batch output alive until it is sent.
            raw = memoryview(np.ascontiguousarray(out).reshape(-1).view(np.uint8))
            output["parameters"] = {"binary_data_size": len(raw)}
            if raws is None:
                raws = [raw]
            else:
                raws.append(raw)
        else:
            output["data"] = json_values(out)
            numpy = True
    if raws is not None:
        header = orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY) if numpy \
            else orjson.dumps(head)
        raws.insert(0, header)
        return raws, {"inference-header-content-length": str(len(header)),
                      "content-type": "application/octet-stream"}
    return [orjson.dumps(head, option=orjson.OPT_SERIALIZE_NUMPY) if numpy
            else orjson.dumps(head)], {"content-type": "application/json"}


def json_values(out: np.ndarray) -> np.ndarray:
    """A flat array orjson serialises natively (bfloat16 widened to float32)."""
    flat = np.ascontiguousarray(out).reshape(-1)
    return flat if flat.dtype in (np.float16, np.float32, np.float64) else flat.astype(np.float32)


def tensor_json(out: np.ndarray) -> dict[str, Any]:
    """A v1 JSON tensor of an array."""
    return {"shape": list(out.shape), "datatype": datatype_name(out.dtype),
            "data": json_values(out)}
