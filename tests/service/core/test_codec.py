"""The core's decoding and encoding of tensors, in-process, for both transports.

http/test_hostile.py sends its corpus through the app; here the same corpus (imported,
not copied) goes through the core's own functions (body reading, ``codec.decode_infer``,
``DataPlane.infer``), and the gRPC ``ModelInferRequest`` through ``grpc.codec.decode_request``,
with no socket in between. That pins each refusal to the exact ``ApiError`` (status, message
naming the field) the core raises, and the gRPC code it maps to, at in-process speed. Good
requests of every datatype round-trip bitwise, and responses decode with tritonclient's own
result classes.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import shared_memory
from typing import Any

import grpc
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from service_helpers import infer_json_body
from service_hostile_corpus import CORPUS, MAX_BODY
from starlette.requests import Request
from tritonclient.grpc import service_pb2 as pb

from normserve.kernels.dtypes import DATATYPES
from normserve.service.core.calls import InferCall, OutputRequest
from normserve.service.core.context import Context
from normserve.service.core.errors import ApiError
from normserve.service.core.metrics import Metrics
from normserve.service.core.protocol import INPUT, OUTPUT
from normserve.service.core.tensors import Limits, bind_inputs, select_outputs
from normserve.service.extensions.shared_memory import SharedMemory
from normserve.service.grpc.codec import decode_request, encode_response
from normserve.service.grpc.errors import status_code
from normserve.service.http.body import read_body, read_body_within
from normserve.service.http.codec import (
    HEADER_LENGTH,
    decode_infer,
    decode_tensor,
    encode_infer,
)
from normserve.service.http.connections import BODY_DEADLINE
from normserve.service.http.fastpath import _INFER
from normserve.service.http.schemas import Tensor
from normserve.service.models.registry import Registry
from normserve.service.settings import Settings

SETTINGS = Settings(max_body_bytes=MAX_BODY, warmup=False)
LIMITS = Limits(SETTINGS.max_tensor_elements, SETTINGS.max_rank)
NO_SHM = SharedMemory(False)
#: Values every datatype holds exactly (FP16 and BF16 included), so decoding is exact.
EXACT = np.array([[0.5, -1.25, 3.0, 0.0], [2.0, -0.125, 8.0, 1.5]])
GRPC_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
              413: grpc.StatusCode.RESOURCE_EXHAUSTED}


def random_rows(datatype: str, shape: tuple[int, ...] = (3, 5), seed: int = 0) -> np.ndarray:
    """Arbitrary finite values of ``datatype`` (not just the friendly ones)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 100).astype(DATATYPES[datatype])


def json_body(array: np.ndarray, datatype: str, **extra: Any) -> bytes:
    return orjson.dumps(infer_json_body(array, datatype, **extra))


def binary_body(array: np.ndarray, datatype: str, **extra: Any) -> tuple[bytes, str]:
    raw = np.ascontiguousarray(array).tobytes()
    head = orjson.dumps({"inputs": [{"name": "input", "shape": list(array.shape),
                                     "datatype": datatype,
                                     "parameters": {"binary_data_size": len(raw)}}], **extra})
    return head + raw, str(len(head))


def grpc_request(array: np.ndarray | None = None, datatype: str = "FP32", raw: bool = True,
                 **fields: Any) -> pb.ModelInferRequest:
    """A ModelInferRequest for ``layer_norm_1024`` (one row of 0.5s unless given)."""
    if array is None:
        array = np.full((1, 1024), 0.5, DATATYPES[datatype])
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype=datatype,
                                                   shape=array.shape)
    req = pb.ModelInferRequest(model_name="layer_norm_1024", inputs=[tensor], **fields)
    if raw:
        req.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
    else:
        field = {"FP32": "fp32_contents", "FP64": "fp64_contents"}[datatype]
        getattr(req.inputs[0].contents, field).extend(array.ravel().tolist())
    return req


def refused(call: Callable[[], Any]) -> ApiError:
    """The ``ApiError`` ``call`` raises (anything else, or nothing, fails the test)."""
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def assert_client_error(exc: ApiError, status: int, word: str) -> None:
    """The refusal a transport turns into a 4xx: the status, a message naming the field,
    the one gRPC code for that status, and no server-side reason (it is the client's)."""
    assert exc.status == status, exc.message
    assert exc.message and word.lower() in exc.message.lower(), exc.message
    assert exc.reason is None
    assert status_code(exc) == GRPC_CODES[status]


# --- HTTP: good bodies of every datatype ----------------------------------------------------

@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_http_json_body_decodes_every_datatype(datatype: str) -> None:
    body = json_body(EXACT, datatype, id="req-7", parameters={"timeout": 2_500_000})
    call = decode_infer(body, None, LIMITS, NO_SHM)
    assert call.array.dtype == DATATYPES[datatype] and call.array.shape == EXACT.shape
    assert np.array_equal(call.array.astype(np.float64), EXACT)
    assert (call.request_id, call.input_name, call.field) == ("req-7", "input", "inputs[0]")
    assert call.timeout_s == 2.5 and call.binary_output is False
    assert call.output_region is None and call.output_params is None


def test_http_json_data_may_be_nested_row_major() -> None:
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                     "data": EXACT.tolist()}]})
    call = decode_infer(body, None, LIMITS, NO_SHM)
    assert np.array_equal(call.array, EXACT.astype(np.float32))


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_http_binary_body_is_a_zero_copy_view_of_every_datatype(datatype: str) -> None:
    array = random_rows(datatype)
    body, header_length = binary_body(array, datatype)
    call = decode_infer(body, header_length, LIMITS, NO_SHM)
    assert call.array.dtype == array.dtype and call.array.shape == array.shape
    assert call.array.tobytes() == array.tobytes()
    assert not call.array.flags.writeable  # a view of the body, which the batcher copies
    base = call.array.base
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, memoryview) and base.obj is body


def test_repeated_binary_headers_decode_each_request_on_its_own() -> None:
    """Small headers are validated once and reused (codec._small_header): the same header
    with other data, or another id, still decodes to that request's own values."""
    a, b = random_rows("FP32", seed=1), random_rows("FP32", seed=2)
    for _ in range(2):
        for array, request_id in ((a, "a"), (b, "b"), (a, None)):
            extra = {} if request_id is None else {"id": request_id}
            body, length = binary_body(array, "FP32", **extra)
            call = decode_infer(body, length, LIMITS, NO_SHM)
            assert call.request_id == request_id
            assert call.array.tobytes() == array.tobytes()
    bad, length = binary_body(a, "FP32", parameters={"timeout": -1})
    for _ in range(2):  # a refused header is refused every time (refusals are not cached)
        assert_client_error(refused(lambda: decode_infer(bad, length, LIMITS, NO_SHM)), 400,
                            "timeout")


def test_http_binary_output_flags_request_level_then_per_output() -> None:
    """``parameters.binary_data_output`` sets the default; an output's ``binary_data``
    overrides it, either way."""
    def binary_out(**extra: Any) -> bool:
        return decode_infer(json_body(EXACT, "FP32", **extra), None, LIMITS, NO_SHM
                            ).binary_output

    assert binary_out() is False
    assert binary_out(parameters={"binary_data_output": True}) is True
    assert binary_out(parameters={"binary_data_output": True},
                      outputs=[{"name": "output", "parameters": {"binary_data": False}}]) is False
    assert binary_out(outputs=[{"name": "output", "parameters": {"binary_data": True}}]) is True
    assert binary_out(outputs=[{"name": "output"}]) is False


def test_http_body_names_its_model_and_version() -> None:
    call = decode_infer(json_body(EXACT, "FP32", model_name="m", model_version="1"), None,
                        LIMITS, NO_SHM)
    assert (call.model_name, call.model_version) == ("m", "1")


def test_v1_tensor_decodes_and_refuses_like_v2() -> None:
    tensor = Tensor(shape=[2, 4], datatype="FP64", data=EXACT.ravel().tolist())
    assert np.array_equal(decode_tensor(tensor, LIMITS, "input"), EXACT)
    bad = Tensor(shape=[2, 4], datatype="INT8", data=[1] * 8)
    assert_client_error(refused(lambda: decode_tensor(bad, LIMITS, "params.weight")), 400,
                        "params.weight.datatype")
    huge = Tensor(shape=[10**12], data=[1.0])
    assert_client_error(refused(lambda: decode_tensor(huge, LIMITS, "params.w")), 413,
                        "params.w.shape")


# --- gRPC: good messages of every datatype --------------------------------------------------

@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_grpc_raw_contents_decode_every_datatype(datatype: str) -> None:
    array = random_rows(datatype)
    req = grpc_request(array, datatype, id="g-1", model_version="1")
    req.parameters["timeout"].int64_param = 1_000
    call = decode_request(req, LIMITS, NO_SHM)
    assert call.array.dtype == array.dtype and call.array.shape == array.shape
    assert call.array.tobytes() == array.tobytes()
    assert (call.request_id, call.model_name, call.model_version) == (
        "g-1", "layer_norm_1024", "1")
    assert call.timeout_s == 0.001 and call.binary_output is True


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_grpc_typed_contents_decode(datatype: str) -> None:
    array = random_rows(datatype)
    call = decode_request(grpc_request(array, datatype, raw=False), LIMITS, NO_SHM)
    assert call.array.dtype == array.dtype
    assert call.array.tobytes() == array.tobytes()
    assert call.request_id is None and call.model_version is None and call.timeout_s is None


# --- encoding answers -------------------------------------------------------------------

@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_json_answer_round_trips_bitwise_through_tritonclient(datatype: str) -> None:
    """Arbitrary values of every datatype survive JSON (BF16 widened to FP32 on the way)."""
    out = random_rows(datatype, seed=3)
    call = InferCall("id-3", "input", out, False, None)
    parts, headers = encode_infer("m", call, out)
    assert len(parts) == 1 and headers == {"content-type": "application/json"}
    head = orjson.loads(parts[0])
    assert head["id"] == "id-3" and head["model_name"] == "m" and head["model_version"] == "1"
    assert head["outputs"][0]["datatype"] == datatype
    assert head["outputs"][0]["shape"] == list(out.shape)
    decoded = triton_http.InferResult.from_response_body(parts[0]).as_numpy("output")
    assert decoded.dtype == out.dtype and decoded.tobytes() == out.tobytes()


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_binary_answer_round_trips_through_tritonclient(datatype: str) -> None:
    out = random_rows(datatype, seed=4)
    call = InferCall(None, "input", out, True, None)
    parts, headers = encode_infer("m", call, out)
    header, raw = parts
    assert headers["content-type"] == "application/octet-stream"
    assert int(headers[HEADER_LENGTH]) == len(header)
    head = orjson.loads(header)
    assert "id" not in head
    assert head["outputs"][0]["parameters"] == {"binary_data_size": out.nbytes}
    assert bytes(raw) == out.tobytes()
    decoded = triton_http.InferResult.from_response_body(
        bytes(header) + bytes(raw), header_length=len(header)).as_numpy("output")
    assert decoded.dtype == out.dtype and decoded.tobytes() == out.tobytes()


@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_grpc_answer_round_trips_through_tritonclient(datatype: str) -> None:
    out = random_rows(datatype, seed=5)
    response = encode_response("m", InferCall("g", "input", out, True, None), out)
    assert (response.model_name, response.model_version, response.id) == ("m", "1", "g")
    assert response.outputs[0].datatype == datatype
    assert list(response.outputs[0].shape) == list(out.shape)
    assert response.raw_output_contents[0] == out.tobytes()
    decoded = triton_grpc.InferResult(response).as_numpy("output")
    assert decoded.dtype == out.dtype and decoded.tobytes() == out.tobytes()


def test_answers_for_shared_memory_outputs_are_as_tritons() -> None:
    """An output written to shared memory: as Triton answers it (http_server.cc: an output
    in shared memory gets no parameters and no data; grpc/infer_handler.cc: an empty
    raw_output_contents entry for every output), its name, datatype and shape only; over
    gRPC its raw entry is empty, never missing (Triton's C++ client reads entry i for output
    i), and no parameters (Triton's C++ HTTP client needs binary_data_size in any)."""
    out = random_rows("FP32")
    params = {"shared_memory_region": "r", "shared_memory_offset": 16}
    call = InferCall(None, "input", out, True, None, output_params=params)
    parts, headers = encode_infer("m", call, out)
    (output,) = orjson.loads(parts[0])["outputs"]
    assert len(parts) == 1 and headers["content-type"] == "application/json"
    assert output == {"name": "output", "datatype": "FP32", "shape": list(out.shape)}
    response = encode_response("m", call, out)
    assert list(response.raw_output_contents) == [b""]
    assert not response.outputs[0].parameters


def _two_outputs(in_shm: tuple[bool, bool], binary: bool = True
                 ) -> tuple[InferCall, tuple[np.ndarray, ...], tuple]:
    outs = (random_rows("FP32", seed=1), random_rows("FP32", seed=2))
    names = ("output", "residual_out")
    selected = tuple((i, OutputRequest(names[i], f"outputs[{i}]", binary, None,
                                       {"shared_memory_region": "r"} if shm else None))
                     for i, shm in enumerate(in_shm))
    return InferCall(None, "input", outs[0], binary, None), outs, selected


@pytest.mark.parametrize("in_shm", [(True, False), (False, True), (True, True)],
                         ids=["first-in-shm", "second-in-shm", "both-in-shm"])
def test_two_outputs_some_in_shared_memory(in_shm: tuple[bool, bool]) -> None:
    """A model of two outputs (add_rms_norm's), some in shared memory: gRPC has one raw
    entry per output, empty for those in shared memory, and tritonclient's InferResult
    reads the other at its own index, over gRPC and HTTP (binary and JSON)."""
    names = ("output", "residual_out")
    call, outs, selected = _two_outputs(in_shm)
    response = encode_response("m", call, outs, selected, names)
    assert [o.name for o in response.outputs] == list(names)
    assert list(response.raw_output_contents) == [
        b"" if shm else out.tobytes() for out, shm in zip(outs, in_shm, strict=True)]
    result = triton_grpc.InferResult(response)
    for name, out, shm in zip(names, outs, in_shm, strict=True):
        if not shm:
            assert result.as_numpy(name).tobytes() == out.tobytes()
    for binary in (True, False):
        call, outs, selected = _two_outputs(in_shm, binary)
        parts, headers = encode_infer("m", call, outs, selected, names)
        body = b"".join(bytes(p) for p in parts)
        length = headers.get("inference-header-content-length")
        result = triton_http.InferResult.from_response_body(
            body, header_length=int(length) if length else None)
        for name, out, shm in zip(names, outs, in_shm, strict=True):
            output = result.get_output(name)
            if shm:
                assert output == {"name": name, "datatype": "FP32", "shape": list(out.shape)}
            else:
                assert result.as_numpy(name).tobytes() == out.tobytes()


# --- the hostile corpus, in-process through the core -----------------------------------------

def http_request(path: str, body: bytes | None, headers: dict[str, str],
                 chunks: list[bytes] | None = None, disconnect: bool = False) -> Request:
    """A real Starlette request for a body (as httpx sends it: with its Content-Length
    unless sent in ``chunks``), read through an ASGI ``receive`` as the server reads it."""
    raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if chunks is None:
        chunks = [body or b""]
        if not any(k == b"content-length" for k, _ in raw):
            raw.append((b"content-length", str(len(chunks[0])).encode()))
    messages: Iterator[dict[str, Any]] = iter(
        [{"type": "http.disconnect"}] if disconnect else
        [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
         for i, c in enumerate(chunks)])

    async def receive() -> dict[str, Any]:
        return next(messages, {"type": "http.disconnect"})

    scope = {"type": "http", "method": "POST", "path": path, "headers": raw,
             "query_string": b""}
    return Request(scope, receive)


@pytest.fixture(scope="module")
def context() -> Iterator[Context]:
    """The core as a server builds it (demo models, the hostile test's body limit), but
    with no transport and no warm-up: refusals never reach a kernel."""
    executor = ThreadPoolExecutor(1)
    metrics = Metrics()
    registry = Registry(SETTINGS, executor, metrics)
    registry.load_repository()
    assert not registry.errors
    yield Context(SETTINGS, LIMITS, metrics, registry, executor)
    executor.shutdown()


INFER_CASES = [case for case in CORPUS if case[1] == "POST" and _INFER.fullmatch(case[2])]


def test_the_corpus_has_its_inference_cases() -> None:
    """Every hostile infer body of the end-to-end corpus runs here too (55 today)."""
    assert len(INFER_CASES) >= 50


def failures(ctx: Context, model: str) -> float:
    return ctx.metrics.registry.get_sample_value(
        "nv_inference_request_failure_total",
        {"model": model, "version": "1", "reason": "BAD_REQUEST"}) or 0.0


@pytest.mark.parametrize(("path", "body", "headers", "status", "word"),
                         [case[2:] for case in INFER_CASES], ids=[c[0] for c in INFER_CASES])
def test_hostile_infer_body_is_refused_by_the_core(context: Context, path: str, body: bytes,
                                                   headers: dict[str, str], status: int,
                                                   word: str) -> None:
    """What the HTTP transport does, minus the socket: read the body under the limits,
    decode it, hand it to ``DataPlane.infer``; the ApiError is the one the server answers,
    and a refusal of a served model counts as its failure."""
    match = _INFER.fullmatch(path)
    assert match is not None
    name, version = match.groups()
    request = http_request(path, body, headers)
    plane = context.dataplane

    async def decode() -> InferCall:
        raw = await read_body_within(request, SETTINGS.max_body_bytes, SETTINGS.request_timeout)
        return decode_infer(raw, request.headers.get(HEADER_LENGTH), context.limits, plane.shm)

    before = failures(context, name)
    exc = refused(lambda: asyncio.run(plane.infer(name, version, decode)))
    assert_client_error(exc, status, word)
    assert failures(context, name) - before == (0 if status == 404 else 1)


def test_good_requests_pass_the_same_core_path(context: Context) -> None:
    """The control: a good JSON and a good binary body, and a good gRPC message, through
    the same path as the corpus, are answered with the layer's exact output."""
    model = context.registry.get("layer_norm_1024")
    x = random_rows("FP32", (2, 1024))
    body, header_length = binary_body(x, "FP32")
    requests = [(json_body(x, "FP32"), None), (body, header_length)]
    plane = context.dataplane

    async def main() -> list[np.ndarray]:
        model.batcher.start()
        outs = []
        for raw, length in requests:
            async def decode(raw: bytes = raw, length: str | None = length) -> InferCall:
                return decode_infer(raw, length, LIMITS, plane.shm)

            outs.append((await plane.infer("layer_norm_1024", None, decode)).output)
        req = grpc_request(x)

        async def decode_grpc() -> InferCall:
            return decode_request(req, LIMITS, plane.shm)

        outs.append((await plane.infer(req.model_name, None, decode_grpc)).output)
        await model.batcher.close()
        return outs

    try:
        outs = asyncio.run(main())
    finally:  # this model's batcher belonged to that loop: serve on with a fresh one
        context.registry.add(model.name, model.config, model.layer)
    for out in outs:
        assert out.tobytes() == model.layer.apply(x).tobytes()


# --- body reading beyond the corpus -----------------------------------------------------------

def read(request: Request, limit: int = 1000) -> bytes:
    return asyncio.run(read_body(request, limit))


def test_a_chunked_body_over_the_limit_is_refused_as_it_streams() -> None:
    request = http_request("/", None, {}, chunks=[b"x" * 600, b"x" * 600, b"never read"])
    assert_client_error(refused(lambda: read(request)), 413, "body")


def test_a_chunked_body_within_the_limit_is_joined() -> None:
    assert read(http_request("/", None, {}, chunks=[b"ab", b"cd", b""])) == b"abcd"


def test_a_client_that_disconnects_mid_body_gets_a_400() -> None:
    request = http_request("/", None, {"content-length": "10"}, disconnect=True)
    assert_client_error(refused(lambda: read(request)), 400, "disconnected")


def test_a_content_length_that_is_not_a_number_is_refused() -> None:
    request = http_request("/", b"{}", {"content-length": "-1"})
    assert_client_error(refused(lambda: read(request)), 400, "Content-Length")


def slow_request(extensions: dict[str, Any]) -> Request:
    """A request whose body arrives 0.2 s after it is asked for."""
    async def receive() -> dict[str, Any]:
        await asyncio.sleep(0.2)
        return {"type": "http.request", "body": b"late", "more_body": False}

    return Request({"type": "http", "method": "POST", "path": "/", "query_string": b"",
                    "headers": [], "extensions": extensions}, receive)


def test_a_body_slower_than_the_deadline_is_a_408() -> None:
    exc = refused(lambda: asyncio.run(read_body_within(slow_request({}), 1000, 0.05)))
    assert exc.status == 408 and "not received within 0.05 s" in exc.message


def test_under_a_connection_that_enforces_the_body_deadline_the_app_arms_none() -> None:
    """connections.py marks each request it holds to the deadline itself (and answers the
    408 there): the app then waits for the body without a timer of its own."""
    request = slow_request({BODY_DEADLINE: {}})
    assert asyncio.run(read_body_within(request, 1000, 0.05)) == b"late"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", " GZIP ", "identity"])
def test_compressed_bodies_are_inflated(encoding: str) -> None:
    data = b'{"inputs": []}' * 10
    kind = encoding.strip().lower()
    wbits = {"gzip": zlib.MAX_WBITS | 16, "deflate": zlib.MAX_WBITS}.get(kind)
    if wbits is None:
        body = data
    else:
        packer = zlib.compressobj(wbits=wbits)
        body = packer.compress(data) + packer.flush()
    assert read(http_request("/", body, {"content-encoding": encoding})) == data


def test_a_deflate_bomb_is_refused_within_the_limit() -> None:
    body = zlib.compress(b"\0" * 10_000_000)
    request = http_request("/", body, {"content-encoding": "deflate"})
    assert_client_error(refused(lambda: read(request, 1000)), 413, "limit of 1000")


# --- HTTP refusals beyond the corpus ----------------------------------------------------------

def _http(**spec: Any) -> bytes:
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5] * 4}
    tensor.update(spec)
    return orjson.dumps({"inputs": [tensor]})


def _sized(size: Any) -> tuple[bytes, str]:
    """A binary body of 8 FP32 values whose ``binary_data_size`` is ``size``."""
    head = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                                     "parameters": {"binary_data_size": size}}]})
    return head + EXACT.astype(np.float32).tobytes(), str(len(head))


HTTP_EXTRA: list[tuple[str, bytes, str | None, int, str]] = [
    ("header-length-empty", _http(), "", 400, "Inference-Header-Content-Length"),
    ("header-length-negative", _http(), "-1", 400, "Inference-Header-Content-Length"),
    ("binary-size-bool", *_sized(True), 400, "binary_data_size"),
    ("binary-size-string", *_sized("32"), 400, "binary_data_size"),
    ("binary-size-float", orjson.dumps({"inputs": [{
        "name": "x", "shape": [1], "datatype": "FP32",
        "parameters": {"binary_data_size": 4.0}}]}), None, 400, "binary_data_size"),
    ("timeout-bool", _http()[:-1] + b',"parameters":{"timeout":true}}', None, 400, "timeout"),
    ("timeout-zero", _http()[:-1] + b',"parameters":{"timeout":0}}', None, 400, "timeout"),
    ("timeout-float", _http()[:-1] + b',"parameters":{"timeout":1.5}}', None, 400, "timeout"),
    ("data-int-overflow-fp16", _http(datatype="FP16", data=[70000] * 4), None, 400, "range"),
    ("data-mixed-types", _http(data=[1.0, "a", 2.0, 3.0]), None, 400, "data"),
    ("data-nested-bools", _http(shape=[2, 2], data=[[True, False], [True, False]]), None,
     400, "data"),
    ("data-ragged-nested-right-count", _http(shape=[2, 2], data=[[1.0], [2.0, 3.0, 4.0]]),
     None, 400, "data"),
    ("shape-rank-nine", _http(shape=[1] * 9, data=[0.5]), None, 400, "rank"),
    ("shape-elements-over-limit", _http(shape=[LIMITS.max_tensor_elements + 1], data=[1.0]),
     None, 413, "limit"),
    ("shm-region-unregistered", _http(data=None, parameters={
        "shared_memory_region": "nope", "shared_memory_byte_size": 16}), None, 400,
     "shared_memory_region"),
    ("shm-output-unregistered", orjson.dumps({**orjson.loads(_http()), "outputs": [{
        "name": "output", "parameters": {"shared_memory_region": "nope",
                                         "shared_memory_byte_size": 16}}]}), None, 400,
     "outputs[0].parameters.shared_memory_region"),
    ("name-empty", _http(name=""), None, 400, "name"),
    ("inputs-not-list", orjson.dumps({"inputs": {"name": "x"}}), None, 400, "inputs"),
]


@pytest.mark.parametrize(("body", "header_length", "status", "word"),
                         [c[1:] for c in HTTP_EXTRA], ids=[c[0] for c in HTTP_EXTRA])
def test_more_hostile_http_bodies(body: bytes, header_length: str | None, status: int,
                                  word: str) -> None:
    exc = refused(lambda: decode_infer(body, header_length, LIMITS, NO_SHM))
    assert_client_error(exc, status, word)


def test_a_header_length_of_superscript_digits_is_a_client_error() -> None:
    """"\u00b2" is a digit to str.isdigit() and not to int(): 400, not a 500."""
    body, _ = binary_body(EXACT.astype(np.float32), "FP32")
    exc = refused(lambda: decode_infer(body, "\u00b2", LIMITS, NO_SHM))
    assert_client_error(exc, 400, "Inference-Header-Content-Length")


# --- gRPC: the hostile messages ---------------------------------------------------------------

def _mutated(change: Callable[[pb.ModelInferRequest], Any], **kwargs: Any
             ) -> pb.ModelInferRequest:
    req = grpc_request(**kwargs)
    change(req)
    return req


def _set_timeout(value: str, kind: str) -> Callable[[pb.ModelInferRequest], None]:
    def change(req: pb.ModelInferRequest) -> None:
        setattr(req.parameters["timeout"], kind, value)
    return change


def _shape(*dims: int) -> Callable[[pb.ModelInferRequest], None]:
    def change(req: pb.ModelInferRequest) -> None:
        del req.inputs[0].shape[:]
        req.inputs[0].shape.extend(dims)
    return change


GRPC_CASES: list[tuple[str, Callable[[], pb.ModelInferRequest], int, str]] = [
    ("inputs-missing", lambda: _mutated(lambda r: r.ClearField("inputs")), 400, "inputs"),
    ("inputs-two", lambda: _mutated(lambda r: (
        r.inputs.add(name="y", datatype="FP32", shape=[1, 1024]),
        r.raw_input_contents.append(r.raw_input_contents[0]))), 400, "one input"),
    ("inputs-duplicate", lambda: _mutated(lambda r: r.inputs.append(r.inputs[0])), 400,
     "duplicate"),
    ("datatype-int32", lambda: _mutated(lambda r: setattr(r.inputs[0], "datatype", "INT32")),
     400, "inputs[0].datatype"),
    ("datatype-bytes", lambda: _mutated(lambda r: setattr(r.inputs[0], "datatype", "BYTES")),
     400, "inputs[0].datatype"),
    ("datatype-empty", lambda: _mutated(lambda r: setattr(r.inputs[0], "datatype", "")), 400,
     "inputs[0].datatype"),
    ("datatype-lowercase", lambda: _mutated(lambda r: setattr(r.inputs[0], "datatype",
                                                              "fp32")), 400, "datatype"),
    ("shape-negative", lambda: _mutated(_shape(-1, 1024)), 400, "inputs[0].shape[0]"),
    ("shape-rank-too-high", lambda: _mutated(_shape(*[1] * 20)), 400, "rank"),
    ("shape-huge", lambda: _mutated(_shape(10**9, 1024)), 413, "inputs[0].shape"),
    ("shape-astronomic", lambda: _mutated(_shape(2**62, 2**62)), 413, "inputs[0].shape"),
    ("raw-too-short", lambda: _mutated(lambda r: r.raw_input_contents.__setitem__(
        0, b"\0" * 4092)), 400, "raw_input_contents[0]"),
    ("raw-too-long", lambda: _mutated(lambda r: r.raw_input_contents.__setitem__(
        0, b"\0" * 4100)), 400, "raw_input_contents[0]"),
    ("raw-odd-bytes", lambda: _mutated(lambda r: r.raw_input_contents.__setitem__(
        0, b"\0" * 3)), 400, "raw_input_contents[0]"),
    ("raw-two-entries", lambda: _mutated(lambda r: r.raw_input_contents.append(b"\0" * 4)),
     400, "raw_input_contents"),
    ("raw-and-contents", lambda: _mutated(lambda r: r.inputs[0].contents.fp32_contents.extend(
        [0.5] * 1024)), 400, "not both"),
    ("no-data", lambda: _mutated(lambda r: r.ClearField("raw_input_contents")), 400,
     "no data"),
    ("contents-too-few", lambda: _mutated(lambda r: r.inputs[0].contents.fp32_contents.pop(),
                                          raw=False), 400, "fp32_contents"),
    ("contents-too-many", lambda: _mutated(lambda r: r.inputs[0].contents.fp32_contents.append(
        1.0), raw=False), 400, "fp32_contents"),
    ("contents-wrong-field", lambda: _mutated(lambda r: (
        r.inputs[0].contents.ClearField("fp32_contents"),
        r.inputs[0].contents.int_contents.extend([1] * 1024)), raw=False), 400,
     "contents.int_contents"),
    ("contents-extra-field", lambda: _mutated(lambda r: r.inputs[0].contents.bytes_contents
                                              .append(b"x"), raw=False), 400,
     "contents.bytes_contents"),
    ("contents-fp16", lambda: _mutated(lambda r: (
        setattr(r.inputs[0], "datatype", "FP16"),
        r.inputs[0].contents.fp32_contents.extend([0.5] * 1024),
        r.ClearField("raw_input_contents"))), 400, "raw_input_contents"),
    ("contents-bf16", lambda: _mutated(lambda r: (
        setattr(r.inputs[0], "datatype", "BF16"),
        r.inputs[0].contents.fp32_contents.extend([0.5] * 1024),
        r.ClearField("raw_input_contents"))), 400, "typed contents"),
    ("unknown-output", lambda: _mutated(lambda r: r.outputs.add(name="y")), 400, "outputs[0]"),
    ("duplicate-output", lambda: _mutated(lambda r: (r.outputs.add(name="output"),
                                                     r.outputs.add(name="output"))), 400,
     "outputs[1].name"),
    ("timeout-negative", lambda: _mutated(_set_timeout(-5, "int64_param")), 400, "timeout"),
    ("timeout-zero", lambda: _mutated(_set_timeout(0, "int64_param")), 400, "timeout"),
    ("timeout-string", lambda: _mutated(_set_timeout("5", "string_param")), 400, "timeout"),
    ("timeout-bool", lambda: _mutated(_set_timeout(True, "bool_param")), 400, "timeout"),
    ("timeout-double", lambda: _mutated(_set_timeout(1.5, "double_param")), 400, "timeout"),
    ("shm-region-unregistered", lambda: _mutated(lambda r: (
        r.inputs[0].parameters["shared_memory_region"].__setattr__("string_param", "nope"),
        r.inputs[0].parameters["shared_memory_byte_size"].__setattr__("int64_param", 4096))),
     400, "inputs[0].parameters.shared_memory_region"),
]


def test_grpc_corpus_ids_are_unique() -> None:
    assert len({c[0] for c in GRPC_CASES}) == len(GRPC_CASES) >= 30


@pytest.mark.parametrize(("build", "status", "word"), [c[1:] for c in GRPC_CASES],
                         ids=[c[0] for c in GRPC_CASES])
def test_hostile_grpc_message_is_refused(build: Callable[[], pb.ModelInferRequest],
                                         status: int, word: str) -> None:
    req = pb.ModelInferRequest.FromString(build().SerializeToString())  # as received
    exc = refused(lambda: one_input_model(decode_request(req, LIMITS, NO_SHM)))
    assert_client_error(exc, status, word)


def one_input_model(call: InferCall) -> InferCall:
    """What the core checks of a decoded call for a model of one input and one output
    (which inputs and outputs a model has is the core's to check, not the codec's)."""
    bind_inputs(call, (INPUT,))
    select_outputs(call, (OUTPUT,), ((0, None),))
    return call


@pytest.mark.parametrize(("shape", "word"), [([1, 1000], "shape[1]"), ([1024], "shape"),
                                             ([0, 1024], "batch"), ([1, 2, 1024], "shape")])
def test_grpc_message_of_the_wrong_shape_for_the_model_is_refused(
        context: Context, shape: list[int], word: str) -> None:
    """Decoding accepts any shape within the limits; the data plane checks it against the
    model, for gRPC as for HTTP."""
    req = grpc_request(np.zeros(shape, np.float32))
    plane = context.dataplane

    async def decode() -> InferCall:
        return decode_request(req, LIMITS, plane.shm)

    exc = refused(lambda: asyncio.run(plane.infer(req.model_name, None, decode)))
    assert_client_error(exc, 400, word)


# --- shared memory inputs and outputs -------------------------------------------------------

@pytest.fixture()
def region() -> Iterator[tuple[SharedMemory, shared_memory.SharedMemory]]:
    """A real POSIX shared-memory object registered as region ``r`` (offset 64)."""
    block = shared_memory.SharedMemory(f"normserve-test-{uuid.uuid4().hex[:12]}", create=True,
                                       size=64 + 4096)
    shm = SharedMemory(True)
    shm.register("r", block.name, 64, 4096)
    try:
        yield shm, block
    finally:
        shm.unregister()
        block.close()
        block.unlink()


def test_shared_memory_input_is_a_view_of_the_region(region) -> None:
    shm, block = region
    x = random_rows("FP32", (2, 8))
    block.buf[64 + 32:64 + 32 + x.nbytes] = x.tobytes()
    params = {"shared_memory_region": "r", "shared_memory_offset": 32,
              "shared_memory_byte_size": x.nbytes}
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32",
                                     "parameters": params}]})
    call = decode_infer(body, None, LIMITS, shm)
    assert call.array.tobytes() == x.tobytes()
    req = grpc_request(x, raw=False)
    req.inputs[0].ClearField("contents")
    for key, value in params.items():
        param = req.inputs[0].parameters[key]
        if isinstance(value, str):
            param.string_param = value
        else:
            param.int64_param = value
    grpc_call = decode_request(req, LIMITS, shm)
    block.buf[64 + 32:64 + 36] = np.float32(42).tobytes()  # the client rewrites its region
    for array in (call.array, grpc_call.array):
        assert array[0, 0] == 42  # no copy was made
    del call, grpc_call, array  # views keep the mapping open


def test_shared_memory_output_region_is_decoded_with_its_parameters(region) -> None:
    shm, _ = region
    params = {"shared_memory_region": "r", "shared_memory_byte_size": 64}
    body = orjson.dumps({**orjson.loads(json_body(EXACT, "FP32")),
                         "outputs": [{"name": "output", "parameters": params}]})
    call = decode_infer(body, None, LIMITS, shm)
    assert call.output_params == params
    assert call.output_region is not None and len(call.output_region) == 64
    call.output_region.release()


SHM_REFUSALS: list[tuple[str, dict[str, Any], dict[str, Any], int, str]] = [
    ("byte-size-vs-shape", {"shared_memory_region": "r", "shared_memory_byte_size": 60}, {},
     400, "shared_memory_byte_size"),
    ("past-the-end", {"shared_memory_region": "r", "shared_memory_offset": 4090,
                      "shared_memory_byte_size": 64}, {}, 400, "past the end"),
    ("negative-offset", {"shared_memory_region": "r", "shared_memory_offset": -1,
                         "shared_memory_byte_size": 64}, {}, 400, "shared_memory_offset"),
    ("size-missing", {"shared_memory_region": "r"}, {}, 400, "shared_memory_byte_size"),
    ("size-bool", {"shared_memory_region": "r", "shared_memory_byte_size": True}, {}, 400,
     "shared_memory_byte_size"),
    ("region-and-data", {"shared_memory_region": "r", "shared_memory_byte_size": 64},
     {"data": [0.5] * 16}, 400, "not both"),
    ("region-not-a-string", {"shared_memory_region": 5, "shared_memory_byte_size": 64}, {},
     400, "shared_memory_region"),
]


@pytest.mark.parametrize(("params", "extra", "status", "word"), [c[1:] for c in SHM_REFUSALS],
                         ids=[c[0] for c in SHM_REFUSALS])
def test_shared_memory_refusals(region, params: dict[str, Any], extra: dict[str, Any],
                                status: int, word: str) -> None:
    shm, _ = region
    body = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32",
                                     "parameters": params, **extra}]})
    assert_client_error(refused(lambda: decode_infer(body, None, LIMITS, shm)), status, word)


def test_every_datatype_pair_of_body_and_declared_type_is_checked() -> None:
    """Binary bytes of one datatype declared as another of a different size are refused
    (their byte count cannot match); same-size pairs are the client's business."""
    for sent, declared in itertools.permutations(DATATYPES, 2):
        body, header_length = binary_body(random_rows(sent), sent)
        body = body.replace(f'"datatype":"{sent}"'.encode(), f'"datatype":"{declared}"'.encode())
        header_length = str(int(header_length) + len(declared) - len(sent))
        if DATATYPES[sent].itemsize == DATATYPES[declared].itemsize:
            assert decode_infer(body, header_length, LIMITS, NO_SHM).array.dtype == \
                DATATYPES[declared]
        else:
            exc = refused(lambda b=body, h=header_length: decode_infer(b, h, LIMITS, NO_SHM))
            assert_client_error(exc, 400, "binary_data_size")
