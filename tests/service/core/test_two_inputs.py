"""Models of two inputs and two outputs through the core, in-process (issue 21, SPEC 9).

The layer here is a test's own: an add followed by ``rms_norm`` (``input`` + ``residual``
-> ``output``, ``residual_out``), a ``PreparedLayer`` that no registry knows, served by
adding it to the core's registry. So these tests pin what the service does for any kind of
several inputs (HTTP and gRPC decoding, binding by name, selecting outputs, batching rows
aligned across inputs, shared memory), whatever the fused kernels do; test_fused_models.py
serves the real ``add_rms_norm`` and ``add_layer_norm`` kinds.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from service_fused_cases import binary_infer_body
from tritonclient.grpc import service_pb2 as pb

from normserve.kernels import prepare
from normserve.kernels.dtypes import DATATYPES, datatype_name
from normserve.kernels.oracle import assert_close, reference
from normserve.repository import ModelConfig
from normserve.service.batching.compute import compute
from normserve.service.core.calls import InferCall
from normserve.service.core.errors import ApiError
from normserve.service.extensions.model_config import triton_config
from normserve.service.grpc.codec import decode_request, encode_response
from normserve.service.http.codec import decode_infer, encode_infer

NAME = "two_8"
FEATURES = 8
WEIGHT = np.linspace(0.5, 1.5, FEATURES)
RMS = type(prepare("rms_norm", {"weight": WEIGHT}, normalized_shape=[FEATURES]))


class AddThenRMS(RMS):  # type: ignore[misc, valid-type]
    """``h = x + residual`` (FP32, rounded once to the input dtype), ``y = rms_norm(h)``."""

    input_names = ("input", "residual")
    output_names = ("output", "residual_out")

    def apply_all(self, inputs: Sequence[Any], outs: Sequence[Any] | None = None
                  ) -> tuple[Any, ...]:
        x, r = inputs
        wide = np.float64 if x.dtype == np.float64 else np.float32
        h = (x.astype(wide) + r.astype(wide)).astype(x.dtype)
        if outs is None:
            return self.apply(h), h
        np.copyto(outs[1], h)
        self.apply(h, out=outs[0])
        return tuple(outs)


def two_layer() -> AddThenRMS:
    layer = AddThenRMS.from_state_dict({"weight": WEIGHT}, normalized_shape=[FEATURES])
    layer.sample_shape = (FEATURES,)
    return layer


def expected(x: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The layer's own answer (for bitwise checks), checked against float64 first."""
    y, h = two_layer().apply_all((x, r))
    ref_h = (x.astype(np.float64) + r.astype(np.float64)).astype(x.dtype)
    assert h.tobytes() == ref_h.tobytes()
    assert_close(y, reference("rms_norm", h, {"weight": WEIGHT},
                              {"normalized_shape": [FEATURES]}), x.dtype)
    return y, h


def rows(n: int, seed: int, dtype: Any = np.float32) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, FEATURES)) * 2 + 0.5).astype(dtype)


@pytest.fixture
def plane(make_context: Any) -> Any:
    """The core (demo repository) plus the two-input model ``two_8``, ready."""
    ctx = make_context(allow_shared_memory=True)
    model, _ = ctx.registry.add(NAME, ModelConfig(kind="rms_norm", input_shape=[FEATURES],
                                                  max_batch_size=64), two_layer())
    model.ready = True
    return ctx.dataplane


def serve(plane: Any, *decoders: Any) -> list[Any]:
    """Each decoder's call through ``DataPlane.infer`` of ``two_8``, concurrently (they may
    share a batch): the Answer, or the ApiError it was refused with."""
    model = plane.ctx.registry.get(NAME)

    async def one(decode: Any) -> Any:
        async def call() -> InferCall:
            return decode()
        try:
            return await plane.infer(NAME, None, call)
        except ApiError as exc:
            return exc

    async def main() -> list[Any]:
        model.batcher.start()
        try:
            return await asyncio.gather(*(one(d) for d in decoders))
        finally:
            await model.batcher.close()

    return asyncio.run(main())


def http_json(*tensors: tuple[str, np.ndarray], outputs: list[dict] | None = None,
              **extra: Any) -> bytes:
    body: dict[str, Any] = {"inputs": [
        {"name": n, "shape": list(a.shape), "datatype": datatype_name(a.dtype),
         "data": a.astype(np.float64).ravel().tolist()} for n, a in tensors], **extra}
    if outputs is not None:
        body["outputs"] = outputs
    return orjson.dumps(body)


def http_binary(*tensors: tuple[str, np.ndarray], outputs: list[dict] | None = None
                ) -> tuple[bytes, str]:
    return binary_infer_body(*tensors, outputs=outputs)


def grpc_message(*tensors: tuple[str, np.ndarray], outputs: Sequence[str] = ()
                 ) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name=NAME)
    for n, a in tensors:
        req.inputs.add(name=n, datatype=datatype_name(a.dtype), shape=a.shape)
        req.raw_input_contents.append(np.ascontiguousarray(a).tobytes())
    for n in outputs:
        req.outputs.add(name=n)
    return req


def http_answer(plane: Any, answer: Any) -> triton_http.InferResult:
    """The answer as the HTTP transport encodes it, read by tritonclient's own class."""
    parts, headers = encode_infer(NAME, answer.call, answer.outputs, answer.selected,
                                  answer.model.output_names)
    length = headers.get("inference-header-content-length")
    return triton_http.InferResult.from_response_body(
        b"".join(bytes(p) for p in parts), header_length=None if length is None else int(length))


def names_of(result: Any) -> list[str]:
    response = result.get_response()
    outputs = response["outputs"] if isinstance(response, dict) else response.outputs
    return [o["name"] if isinstance(o, dict) else o.name for o in outputs]


# --- metadata and configuration ---------------------------------------------------------------

def test_metadata_and_triton_config_list_both_inputs_and_both_outputs(plane: Any) -> None:
    meta = plane.model_metadata(NAME)
    assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [
        ("input", [-1, FEATURES]), ("residual", [-1, FEATURES])]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [
        ("output", [-1, FEATURES]), ("residual_out", [-1, FEATURES])]
    config = triton_config(plane.ctx.registry.get(NAME))
    assert [(t["name"], t["dims"]) for t in config["input"]] == [
        ("input", [FEATURES]), ("residual", [FEATURES])]
    assert [(t["name"], t["dims"]) for t in config["output"]] == [
        ("output", [FEATURES]), ("residual_out", [FEATURES])]
    one = plane.model_metadata("layer_norm_1024")  # a model of one input: as before
    assert [t["name"] for t in one["inputs"]] == ["input"]
    assert [t["name"] for t in one["outputs"]] == ["output"]


# --- good requests, every encoding --------------------------------------------------------------

@pytest.mark.parametrize("datatype", list(DATATYPES))
def test_json_request_gets_both_outputs_bitwise(plane: Any, datatype: str) -> None:
    x, r = rows(3, 1, DATATYPES[datatype]), rows(3, 2, DATATYPES[datatype])
    (answer,) = serve(plane, lambda: decode_infer(
        http_json(("input", x), ("residual", r)), None, plane.ctx.limits, plane.shm))
    y, h = expected(x, r)
    result = http_answer(plane, answer)
    assert names_of(result) == ["output", "residual_out"]
    assert result.as_numpy("output").astype(x.dtype).tobytes() == y.tobytes()
    assert result.as_numpy("residual_out").astype(x.dtype).tobytes() == h.tobytes()


def test_inputs_in_either_order_bind_by_name(plane: Any) -> None:
    x, r = rows(2, 3), rows(2, 4)
    body, length = http_binary(("residual", r), ("input", x))
    (answer,) = serve(plane, lambda: decode_infer(body, length, plane.ctx.limits, plane.shm))
    y, h = expected(x, r)
    assert answer.outputs[0].tobytes() == y.tobytes()
    assert answer.outputs[1].tobytes() == h.tobytes()


@pytest.mark.parametrize("named", [["output"], ["residual_out"], ["residual_out", "output"]])
def test_named_outputs_are_answered_and_no_others(plane: Any, named: list[str]) -> None:
    x, r = rows(2, 5), rows(2, 6)
    want = dict(zip(("output", "residual_out"), expected(x, r), strict=True))
    body, length = http_binary(("input", x), ("residual", r), outputs=[
        {"name": n, "parameters": {"binary_data": True}} for n in named])
    req = grpc_message(("input", x), ("residual", r), outputs=named)
    answers = serve(plane, lambda: decode_infer(body, length, plane.ctx.limits, plane.shm),
                    lambda: decode_request(req, plane.ctx.limits, plane.shm))
    result = http_answer(plane, answers[0])
    assert names_of(result) == named
    response = encode_response(NAME, answers[1].call, answers[1].outputs, answers[1].selected,
                               answers[1].model.output_names)
    grpc_result = triton_grpc.InferResult(response)
    assert names_of(grpc_result) == named
    for n in named:
        assert result.as_numpy(n).tobytes() == want[n].tobytes()
        assert grpc_result.as_numpy(n).tobytes() == want[n].tobytes()


def test_binary_and_json_outputs_mix_in_one_answer(plane: Any) -> None:
    x, r = rows(2, 7), rows(2, 8)
    body = http_json(("input", x), ("residual", r), outputs=[
        {"name": "output", "parameters": {"binary_data": True}},
        {"name": "residual_out", "parameters": {"binary_data": False}}])
    (answer,) = serve(plane, lambda: decode_infer(body, None, plane.ctx.limits, plane.shm))
    parts, _ = encode_infer(NAME, answer.call, answer.outputs, answer.selected,
                            answer.model.output_names)
    head = orjson.loads(parts[0])
    assert "data" not in head["outputs"][0] and "data" in head["outputs"][1]
    result = http_answer(plane, answer)
    y, h = expected(x, r)
    assert result.as_numpy("output").tobytes() == y.tobytes()
    assert result.as_numpy("residual_out").tobytes() == h.tobytes()


def test_grpc_typed_contents_and_raw_contents_mix(plane: Any) -> None:
    """tritonclient sends raw_input_contents for the inputs that have neither typed
    contents nor shared memory, in order: here ``input`` typed, ``residual`` raw."""
    x, r = rows(2, 9), rows(2, 10)
    req = pb.ModelInferRequest(model_name=NAME)
    req.inputs.add(name="input", datatype="FP32", shape=x.shape)
    req.inputs[0].contents.fp32_contents.extend(x.ravel().tolist())
    req.inputs.add(name="residual", datatype="FP32", shape=r.shape)
    req.raw_input_contents.append(r.tobytes())
    (answer,) = serve(plane, lambda: decode_request(req, plane.ctx.limits, plane.shm))
    y, h = expected(x, r)
    assert answer.outputs[0].tobytes() == y.tobytes()
    assert answer.outputs[1].tobytes() == h.tobytes()


def test_a_one_input_model_still_takes_its_input_under_any_name(plane: Any) -> None:
    layer = plane.ctx.registry.get("layer_norm_1024").layer
    x = np.random.default_rng(0).standard_normal((1, 1024)).astype(np.float32)
    model = plane.ctx.registry.get("layer_norm_1024")

    async def main() -> Any:
        model.batcher.start()
        try:
            async def decode() -> InferCall:
                return decode_infer(http_json(("whatever", x)), None, plane.ctx.limits,
                                    plane.shm)
            return await plane.infer("layer_norm_1024", None, decode)
        finally:
            await model.batcher.close()

    answer = asyncio.run(main())
    assert answer.output.tobytes() == layer.apply(x).tobytes()
    assert len(answer.outputs) == 1


# --- batching -----------------------------------------------------------------------------------

def test_a_batch_joins_both_inputs_row_aligned_and_splits_both_outputs(plane: Any) -> None:
    sizes = (1, 3, 2, 4)
    pairs = [(rows(n, 20 + i), rows(n, 40 + i)) for i, n in enumerate(sizes)]
    batches: list[tuple[int, int, float]] = []
    model = plane.ctx.registry.get(NAME)
    model.batcher.on_batch = lambda *b: batches.append(b)
    decoders = [(lambda x=x, r=r: decode_infer(http_json(("input", x), ("residual", r)), None,
                                               plane.ctx.limits, plane.shm))
                for x, r in pairs]
    answers = serve(plane, *decoders)
    assert sum(requests for _, requests, _ in batches) == len(sizes)
    assert any(requests > 1 for _, requests, _ in batches)  # they did share a batch
    for (x, r), answer in zip(pairs, answers, strict=True):
        y, h = expected(x, r)
        assert answer.outputs[0].tobytes() == y.tobytes()
        assert answer.outputs[1].tobytes() == h.tobytes()


def test_a_bad_request_beside_good_ones_disturbs_none(plane: Any) -> None:
    good = [(rows(2, 60), rows(2, 61)), (rows(1, 62), rows(1, 63))]
    bad_bodies = [http_json(("input", rows(2, 64))),  # residual missing
                  http_json(("input", rows(2, 65)), ("residual", rows(3, 66))),  # rows differ
                  http_json(("input", rows(2, 67)), ("residual", rows(2, 68, np.float64))),
                  http_json(("input", rows(1, 69)), ("residual", rows(1, 70)),
                            outputs=[{"name": "nope"}])]
    decoders = [lambda b=b: decode_infer(b, None, plane.ctx.limits, plane.shm)
                for b in bad_bodies]
    decoders[1:1] = [lambda x=x, r=r: decode_infer(http_json(("input", x), ("residual", r)),
                                                   None, plane.ctx.limits, plane.shm)
                     for x, r in good]
    answers = serve(plane, *decoders)
    refusals = [answers[0], *answers[3:]]
    assert all(isinstance(a, ApiError) and a.status == 400 for a in refusals), refusals
    for (x, r), answer in zip(good, answers[1:3], strict=True):
        y, h = expected(x, r)
        assert answer.outputs[0].tobytes() == y.tobytes()
        assert answer.outputs[1].tobytes() == h.tobytes()


def test_compute_joins_tuples_and_fills_partial_targets() -> None:
    layer = two_layer()
    pairs = [(rows(n, 80 + n), rows(n, 90 + n)) for n in (1, 3, 2)]
    targets: list[Any] = [None, (None, np.empty((3, FEATURES), np.float32)),
                          (np.empty((2, FEATURES), np.float32),
                           np.empty((2, FEATURES), np.float32))]
    outs, _ = compute(layer, pairs, targets)
    assert outs[1][1] is targets[1][1] and outs[2][0] is targets[2][0]
    for (x, r), out in zip(pairs, outs, strict=True):
        y, h = expected(x, r)
        assert out[0].tobytes() == y.tobytes() and out[1].tobytes() == h.tobytes()


# --- bad requests: a 400 naming the input or output ---------------------------------------------

BAD = [
    ("residual-missing", lambda: http_json(("input", rows(2, 1))), "'residual' is missing"),
    ("input-missing", lambda: http_json(("residual", rows(2, 1))), "'input' is missing"),
    ("unknown-input", lambda: http_json(("input", rows(2, 1)), ("residual", rows(2, 2)),
                                        ("extra", rows(2, 3))), "inputs[2].name"),
    ("misnamed-input", lambda: http_json(("x", rows(2, 1)), ("residual", rows(2, 2))),
     "inputs[0].name: unknown input 'x'"),
    ("rows-differ", lambda: http_json(("input", rows(2, 1)), ("residual", rows(3, 2))),
     "inputs[1].shape: input 'residual'"),
    ("features-differ", lambda: http_json(("input", rows(2, 1)),
                                          ("residual", np.zeros((2, 4), np.float32))),
     "inputs[1].shape"),
    ("dtypes-differ", lambda: http_json(("input", rows(2, 1)),
                                        ("residual", rows(2, 2, np.float16))),
     "inputs[1].datatype: input 'residual' is FP16"),
    ("wrong-sample-shape", lambda: http_json(("input", np.zeros((2, 4), np.float32)),
                                             ("residual", np.zeros((2, 4), np.float32))),
     "inputs[0].shape"),
    ("unknown-output", lambda: http_json(("input", rows(2, 1)), ("residual", rows(2, 2)),
                                         outputs=[{"name": "output"}, {"name": "y"}]),
     "outputs[1].name: unknown output 'y'"),
    ("duplicate-output", lambda: http_json(("input", rows(2, 1)), ("residual", rows(2, 2)),
                                           outputs=[{"name": "output"}, {"name": "output"}]),
     "outputs[1].name: duplicate"),
    ("duplicate-input", lambda: http_json(("input", rows(2, 1)), ("input", rows(2, 2))),
     "duplicate input names"),
]


@pytest.mark.parametrize(("body", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_two_input_requests_are_400s_naming_the_tensor(plane: Any, body: Any,
                                                            words: str) -> None:
    raw = body()
    (refusal,) = serve(plane, lambda: decode_infer(raw, None, plane.ctx.limits, plane.shm))
    assert isinstance(refusal, ApiError) and refusal.status == 400, refusal
    assert words in refusal.message, refusal.message


def test_binary_sections_must_add_up_across_inputs(plane: Any) -> None:
    x, r = rows(2, 1), rows(2, 2)
    body, length = http_binary(("input", x), ("residual", r))
    for raw, words in ((body + b"xxxx", "no input claims"),
                       (body[:-4], "inputs[1].parameters.binary_data_size")):
        (refusal,) = serve(plane, lambda raw=raw: decode_infer(raw, length, plane.ctx.limits,
                                                               plane.shm))
        assert isinstance(refusal, ApiError) and refusal.status == 400
        assert words in refusal.message, refusal.message


def test_grpc_raw_entries_must_match_the_inputs(plane: Any) -> None:
    req = grpc_message(("input", rows(2, 1)), ("residual", rows(2, 2)))
    req.raw_input_contents.append(b"\0" * 4)
    (refusal,) = serve(plane, lambda: decode_request(req, plane.ctx.limits, plane.shm))
    assert isinstance(refusal, ApiError) and "raw_input_contents: 3 entries" in refusal.message
    del req.raw_input_contents[1:]
    (refusal,) = serve(plane, lambda: decode_request(req, plane.ctx.limits, plane.shm))
    assert isinstance(refusal, ApiError) and "inputs[1]" in refusal.message


def test_a_one_input_model_refuses_two_inputs(plane: Any) -> None:
    x = np.zeros((1, 1024), np.float32)
    model = plane.ctx.registry.get("layer_norm_1024")

    async def main() -> ApiError:
        async def decode() -> InferCall:
            return decode_infer(http_json(("input", x), ("residual", x)), None,
                                plane.ctx.limits, plane.shm)
        with pytest.raises(ApiError) as info:
            await plane.infer(model.name, None, decode)
        return info.value

    refusal = asyncio.run(main())
    assert refusal.status == 400 and "exactly one input is required, got 2" in refusal.message


# --- shared memory ---------------------------------------------------------------------------

def test_inputs_from_and_outputs_into_shared_memory(plane: Any) -> None:
    x, r = rows(3, 11), rows(3, 12)
    n = x.nbytes
    block = shared_memory.SharedMemory(f"normserve-test-{uuid.uuid4().hex[:12]}", create=True,
                                       size=4 * n)
    try:
        block.buf[:n] = x.tobytes()
        block.buf[n:2 * n] = r.tobytes()
        plane.shm.register("io", block.name, 0, 4 * n)

        def region(offset: int) -> dict[str, Any]:
            return {"shared_memory_region": "io", "shared_memory_byte_size": n,
                    "shared_memory_offset": offset}

        body = orjson.dumps({
            "inputs": [{"name": "input", "shape": [3, FEATURES], "datatype": "FP32",
                        "parameters": region(0)},
                       {"name": "residual", "shape": [3, FEATURES], "datatype": "FP32",
                        "parameters": region(n)}],
            "outputs": [{"name": "residual_out", "parameters": region(3 * n)},
                        {"name": "output", "parameters": region(2 * n)}]})
        (answer,) = serve(plane, lambda: decode_infer(body, None, plane.ctx.limits, plane.shm))
        y, h = expected(x, r)
        assert bytes(block.buf[2 * n:3 * n]) == y.tobytes()
        assert bytes(block.buf[3 * n:4 * n]) == h.tobytes()
        parts, _ = encode_infer(NAME, answer.call, answer.outputs, answer.selected,
                                answer.model.output_names)
        head = orjson.loads(parts[0])
        assert [o["name"] for o in head["outputs"]] == ["residual_out", "output"]
        # As Triton answers outputs in shared memory: no data, no parameters.
        assert all(set(o) == {"name", "datatype", "shape"} for o in head["outputs"])
        del answer, parts
        small = orjson.dumps({**orjson.loads(body), "outputs": [
            {"name": "residual_out", "parameters": {**region(3 * n),
                                                    "shared_memory_byte_size": n - 4}}]})
        (refusal,) = serve(plane, lambda: decode_infer(small, None, plane.ctx.limits,
                                                       plane.shm))
        assert isinstance(refusal, ApiError) and refusal.status == 400
        assert "outputs[0].parameters.shared_memory_byte_size" in refusal.message
        assert "'residual_out'" in refusal.message
    finally:
        plane.shm.unregister()
        block.close()
        block.unlink()


def test_grpc_answer_keeps_raw_entries_aligned_around_a_shared_memory_output(
        plane: Any) -> None:
    """tritonclient reads an output's bytes at the output's index in the answer: an output
    in shared memory before a raw one holds its place."""
    x, r = rows(2, 13), rows(2, 14)
    n = x.nbytes
    block = shared_memory.SharedMemory(f"normserve-test-{uuid.uuid4().hex[:12]}", create=True,
                                       size=n)
    try:
        plane.shm.register("out", block.name, 0, n)
        req = grpc_message(("input", x), ("residual", r), outputs=["output", "residual_out"])
        req.outputs[0].parameters["shared_memory_region"].string_param = "out"
        req.outputs[0].parameters["shared_memory_byte_size"].int64_param = n
        (answer,) = serve(plane, lambda: decode_request(req, plane.ctx.limits, plane.shm))
        response = encode_response(NAME, answer.call, answer.outputs, answer.selected,
                                   answer.model.output_names)
        y, h = expected(x, r)
        assert list(response.raw_output_contents) == [b"", h.tobytes()]
        assert triton_grpc.InferResult(response).as_numpy("residual_out").tobytes() == \
            h.tobytes()
        assert bytes(block.buf[:n]) == y.tobytes()
        del answer
    finally:
        plane.shm.unregister()
        block.close()
        block.unlink()
