"""The gRPC transport, its server started by the app's lifespan in this process on a free
loopback port (HTTP through the TestClient): tritonclient.grpc (sync, asyncio, streaming),
Triton's raw stub for what tritonclient never sends (typed contents, hostile messages), the
gRPC health service, and HTTP and gRPC clients sharing one model's batches. SIGTERM draining
and several workers on one port: tests/service/process/test_grpc_process.py."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from service_helpers import (
    DEMO_MODELS,
    SAMPLE_SHAPES,
    assert_matches_reference,
    check_triton_config,
    in_process,
    infer_binary_body,
    local_layer,
    sample_input,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from normserve.kernels.dtypes import DATATYPES

KINDS = sorted(SAMPLE_SHAPES)
TOKEN = "s3cret"
MAX_BODY = 4 << 20
LN = "layer_norm_1024"


@pytest.fixture(scope="module")
def server():
    with in_process(grpc=True, admin_token=TOKEN, max_body_bytes=MAX_BODY) as app:
        yield app


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def _input(x: np.ndarray, datatype: str, name: str = "input") -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code()


# --- health and metadata --------------------------------------------------------------------
def test_health_metadata_config_and_index(client, server):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "normserve"
    http_meta = server.http.get("/v2").json()
    assert meta["extensions"] == http_meta["extensions"]
    for name in KINDS:
        assert client.is_model_ready(name) and client.is_model_ready(name, "1")
        m = client.get_model_metadata(name, as_json=True)
        over_http = server.http.get(f"/v2/models/{name}").json()
        for key in ("name", "versions", "platform"):
            assert m[key] == over_http[key]
        for key in ("inputs", "outputs"):
            assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in m[key]] == \
                over_http[key]
        config = client.get_model_config(name, as_json=True)["config"]
        check_triton_config(config, name)
    with pytest.raises(InferenceServerException) as err:  # admin only (SPEC 8)
        client.get_model_repository_index()
    assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    index = client.get_model_repository_index(
        headers={"authorization": f"Bearer {TOKEN}"}, as_json=True)["models"]
    assert sorted(m["name"] for m in index) == DEMO_MODELS
    assert all(m["state"] == "READY" for m in index)


def test_unknown_models_and_versions_are_not_found(client):
    for call in (lambda: client.get_model_metadata("nope"),
                 lambda: client.get_model_config("nope"),
                 lambda: client.get_model_metadata(LN, model_version="2"),
                 lambda: client.get_inference_statistics("nope")):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == "StatusCode.NOT_FOUND", err.value
        assert "nope" in err.value.message() or "'2'" in err.value.message()
    assert client.is_model_ready("nope") is False  # as Triton answers (test_grpc_model_ready)


def test_grpc_health_service(server):
    with grpc.insecure_channel(server.grpc_url) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


# --- inference ------------------------------------------------------------------------------
@pytest.mark.parametrize("datatype", list(DATATYPES))
@pytest.mark.parametrize("name", KINDS)
def test_infer_every_kind_and_dtype(client, name, datatype):
    x = sample_input(name, 3, datatype, seed=KINDS.index(name))
    result = client.infer(name, [_input(x, datatype)], request_id=f"g-{name}",
                          outputs=[grpcclient.InferRequestedOutput("output")])
    assert result.get_response().id == f"g-{name}"
    assert result.get_response().model_name == name
    y = result.as_numpy("output")
    assert_matches_reference(name, x, y, datatype)
    assert y.tobytes() == local_layer(name).apply(x).tobytes()  # bitwise the kernel's


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_typed_contents(stub, datatype):
    x = sample_input(LN, 2, datatype, seed=5)
    contents = service_pb2.InferTensorContents(
        **{f"{datatype.lower()}_contents": x.ravel().tolist()})
    reply = stub.ModelInfer(service_pb2.ModelInferRequest(
        model_name=LN, id="typed", inputs=[service_pb2.ModelInferRequest.InferInputTensor(
            name="input", datatype=datatype, shape=x.shape, contents=contents)]))
    assert reply.id == "typed" and reply.outputs[0].datatype == datatype
    y = np.frombuffer(reply.raw_output_contents[0], DATATYPES[datatype]).reshape(x.shape)
    assert y.tobytes() == local_layer(LN).apply(x).tobytes()


def test_asyncio_client_concurrent_requests(server):
    async def main() -> list[tuple[np.ndarray, np.ndarray]]:
        async with aioclient.InferenceServerClient(server.grpc_url) as c:
            xs = [sample_input(LN, 1 + i % 3, "FP32", seed=100 + i) for i in range(40)]

            async def one(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                inp = aioclient.InferInput("input", list(x.shape), "FP32")
                inp.set_data_from_numpy(x)
                return x, (await c.infer(LN, [inp])).as_numpy("output")

            return await asyncio.gather(*(one(x) for x in xs))

    layer = local_layer(LN)
    for x, y in asyncio.run(main()):
        assert y.tobytes() == layer.apply(x).tobytes()


def test_stream_answers_every_request_and_survives_bad_ones(server):
    answers: queue.Queue = queue.Queue()
    c = grpcclient.InferenceServerClient(server.grpc_url)
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    xs = {}
    for i in range(12):
        x = sample_input(LN, 1 + i % 2, "FP32", seed=200 + i)
        xs[f"s{i}"] = x
        c.async_stream_infer(LN, [_input(x, "FP32")], request_id=f"s{i}")
        if i == 5:  # garbage mid-stream: a wrong shape, then an unknown model
            c.async_stream_infer(LN, [_input(np.zeros((1, 7), np.float32), "FP32")],
                                 request_id="bad-shape")
            c.async_stream_infer("nope", [_input(x, "FP32")], request_id="bad-model")
    got, errors = {}, []
    for _ in range(14):
        result, error = answers.get(timeout=30)
        if error is not None:
            errors.append(str(error))
        else:
            got[result.get_response().id] = result.as_numpy("output")
    c.stop_stream()
    c.close()
    layer = local_layer(LN)
    assert set(got) == set(xs)
    for rid, y in got.items():
        assert y.tobytes() == layer.apply(xs[rid]).tobytes()
    assert len(errors) == 2
    assert any("inputs[0].shape" in e for e in errors) and any("'nope'" in e for e in errors)


def test_client_disconnecting_mid_stream_harms_nobody(server, client):
    for _ in range(3):
        c = grpcclient.InferenceServerClient(server.grpc_url)
        c.start_stream(callback=lambda result, error: None)
        for i in range(20):
            c.async_stream_infer(LN, [_input(sample_input(LN, 4, "FP32", seed=i), "FP32")])
        c.close()  # drops the channel with requests in flight
    x = sample_input(LN, 2, "FP32", seed=9)
    assert client.infer(LN, [_input(x, "FP32")]).as_numpy("output").tobytes() == \
        local_layer(LN).apply(x).tobytes()


# --- bad input ------------------------------------------------------------------------------
def _request(x: np.ndarray | None = None, datatype: str = "FP32", raw: bytes | None = None,
             **fields) -> service_pb2.ModelInferRequest:
    x = sample_input(LN, 1, "FP32", seed=1) if x is None else x
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype=datatype,
                                                           shape=x.shape)
    req = service_pb2.ModelInferRequest(**{"model_name": LN, "inputs": [tensor], **fields})
    req.raw_input_contents.append(x.tobytes() if raw is None else raw)
    return req


def _both_contents() -> service_pb2.ModelInferRequest:
    req = _request()
    req.inputs[0].contents.fp32_contents.extend([0.0] * 1024)
    return req


def _typed(datatype: str, contents_field: str) -> service_pb2.ModelInferRequest:
    """One 1x1024 input of ``datatype`` sent in the typed ``contents_field``."""
    req = service_pb2.ModelInferRequest(model_name=LN, inputs=[
        service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype=datatype,
                                                       shape=[1, 1024])])
    getattr(req.inputs[0].contents, contents_field).extend([1] * 1024)
    return req


def _two_inputs() -> service_pb2.ModelInferRequest:
    req = _request()
    req.inputs.append(req.inputs[0])
    req.raw_input_contents.append(req.raw_input_contents[0])
    return req


def _extra_raw() -> service_pb2.ModelInferRequest:
    req = _request()
    req.raw_input_contents.append(req.raw_input_contents[0])
    return req


def _bad_output() -> service_pb2.ModelInferRequest:
    req = _request()
    req.outputs.append(service_pb2.ModelInferRequest.InferRequestedOutputTensor(name="y"))
    return req


def _bad_timeout() -> service_pb2.ModelInferRequest:
    req = _request()
    req.parameters["timeout"].string_param = "soon"
    return req


INVALID = grpc.StatusCode.INVALID_ARGUMENT
HOSTILE = [
    ("raw-too-short", _request(raw=b"\0" * 100), INVALID, "raw_input_contents[0]: 100 bytes"),
    ("raw-too-long", _request(raw=b"\0" * 4100), INVALID, "raw_input_contents[0]: 4100 bytes"),
    ("raw-entries", _extra_raw(), INVALID, "raw_input_contents: 2 entries for 1 input"),
    ("duplicate-inputs", _two_inputs(), INVALID, "inputs: duplicate input names"),
    ("contents-and-raw", _both_contents(), INVALID, "not both"),
    ("unknown-datatype", _request(datatype="FP8"), INVALID, "inputs[0].datatype: 'FP8'"),
    ("int-datatype", _request(datatype="INT32"), INVALID, "inputs[0].datatype"),
    ("typed-fp16", _typed("FP16", "fp32_contents"), INVALID, "no typed contents field"),
    ("wrong-contents-field", _typed("FP32", "int_contents"), INVALID, "contents.int_contents"),
    ("no-data", service_pb2.ModelInferRequest(model_name=LN, inputs=[
        service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                       shape=[1, 1024])]),
     INVALID, "no data"),
    ("no-inputs", service_pb2.ModelInferRequest(model_name=LN), INVALID, "got 0"),
    ("wrong-shape", _request(np.zeros((1, 7), np.float32)), INVALID, "inputs[0].shape"),
    ("negative-dim", service_pb2.ModelInferRequest(model_name=LN, inputs=[
        service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                       shape=[-1, 1024])]),
     INVALID, "inputs[0].shape[0]"),
    ("huge-shape", service_pb2.ModelInferRequest(model_name=LN, inputs=[
        service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32",
                                                       shape=[1 << 20, 1 << 20])]),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "above the limit"),
    ("empty-batch", _request(np.zeros((0, 1024), np.float32)), INVALID, "batch dimension"),
    ("unknown-output", _bad_output(), INVALID, "outputs[0].name"),
    ("bad-timeout", _bad_timeout(), INVALID, "parameters.timeout"),
    ("unknown-model", _request(model_name="nope"), grpc.StatusCode.NOT_FOUND, "'nope'"),
    ("unknown-version", _request(model_version="7"), grpc.StatusCode.NOT_FOUND, "'7'"),
]


@pytest.mark.parametrize(("case", "request_", "code", "words"), HOSTILE,
                         ids=[h[0] for h in HOSTILE])
def test_hostile_request_gets_its_status(stub, client, case, request_, code, words):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request_, timeout=30)
    assert err.value.code() == code, (case, err.value.details())
    assert words in err.value.details(), err.value.details()
    x = sample_input(LN, 1, "FP32", seed=3)  # and the server still answers right
    assert client.infer(LN, [_input(x, "FP32")]).as_numpy("output").tobytes() == \
        local_layer(LN).apply(x).tobytes()


def test_message_over_the_size_limit(stub):
    x = np.zeros((MAX_BODY // 4096 + 1, 1024), np.float32)
    assert _code(lambda: stub.ModelInfer(_request(x), timeout=30)) == \
        grpc.StatusCode.RESOURCE_EXHAUSTED


def test_every_rpc_of_the_service_is_served_here():
    """None left to the generated base class, which raises NotImplementedError (an ERROR
    line with a traceback in the log for a client's request)."""
    from normserve.service.grpc.servicer import Servicer

    base = service_pb2_grpc.GRPCInferenceServiceServicer
    rpcs = [m for m in vars(base) if not m.startswith("_")]
    assert rpcs and [m for m in rpcs if getattr(Servicer, m) is getattr(base, m)] == []


def test_what_is_not_served_says_so(stub, client, caplog):
    """CUDA shared memory: nothing is ever registered (an empty status, unregistering is a
    no-op, as Triton answers for a name it does not know), registering is UNIMPLEMENTED with
    a message; trace settings are UNIMPLEMENTED. No traceback in the log."""
    with caplog.at_level("WARNING"):
        status = stub.CudaSharedMemoryStatus(service_pb2.CudaSharedMemoryStatusRequest(),
                                             timeout=10)
        assert dict(status.regions) == {}
        stub.CudaSharedMemoryUnregister(service_pb2.CudaSharedMemoryUnregisterRequest(),
                                        timeout=10)
        stub.CudaSharedMemoryUnregister(
            service_pb2.CudaSharedMemoryUnregisterRequest(name="never"), timeout=10)
        refusals = [
            (lambda: stub.CudaSharedMemoryRegister(service_pb2.CudaSharedMemoryRegisterRequest(
                name="r", raw_handle=b"\0" * 64, byte_size=64), timeout=10),
             grpc.StatusCode.UNIMPLEMENTED, "use system shared memory"),
            (lambda: stub.CudaSharedMemoryStatus(
                service_pb2.CudaSharedMemoryStatusRequest(name="r"), timeout=10),
             grpc.StatusCode.NOT_FOUND, "'r'"),
            (lambda: stub.TraceSetting(service_pb2.TraceSettingRequest(), timeout=10),
             grpc.StatusCode.UNIMPLEMENTED, "trace settings are not supported"),
            (lambda: client.get_trace_settings(), None, "trace settings are not supported"),
        ]
        for call, code, words in refusals:
            with pytest.raises((grpc.RpcError, InferenceServerException)) as err:
                call()
            if code is not None:
                assert err.value.code() == code, err.value
                assert words in err.value.details(), err.value.details()
            else:
                assert err.value.status() == "StatusCode.UNIMPLEMENTED"
                assert words in err.value.message()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


# --- statistics, model control, logging ------------------------------------------------------
def test_statistics_count_what_the_batcher_did(server):
    name = "rms_norm_512"

    def stats() -> dict:
        return server.http.get(f"/v2/models/{name}/stats").json()["model_stats"][0]

    before = stats()
    c = grpcclient.InferenceServerClient(server.grpc_url)
    rows = 0
    for i in range(6):
        x = sample_input(name, 1 + i, "FP32", seed=i)
        rows += x.shape[0]
        c.infer(name, [_input(x, "FP32")])
    over_grpc = c.get_inference_statistics(name, as_json=True)["model_stats"][0]
    c.close()
    after = stats()
    assert int(over_grpc["inference_count"]) == after["inference_count"]
    assert int(over_grpc["execution_count"]) == after["execution_count"]
    assert after["inference_count"] - before["inference_count"] == rows
    assert 1 <= after["execution_count"] - before["execution_count"] <= 6
    success = after["inference_stats"]["success"]
    assert success["count"] - before["inference_stats"]["success"]["count"] == 6
    assert success["ns"] > before["inference_stats"]["success"]["ns"]
    batches = after["batch_stats"]
    assert sum(b["compute_infer"]["count"] for b in batches) == after["execution_count"]
    assert sum(b["batch_size"] * b["compute_infer"]["count"] for b in batches) == \
        after["inference_count"]


def test_model_control_needs_the_admin_token(server):
    c = grpcclient.InferenceServerClient(server.grpc_url)
    for headers, status in ((None, "UNAUTHENTICATED"), ({"authorization": "Bearer x"},
                                                        "PERMISSION_DENIED"),
                            ({"authorization": f"Bearer {TOKEN}"}, "INVALID_ARGUMENT")):
        for call in (c.load_model, c.unload_model):
            with pytest.raises(InferenceServerException) as err:
                call(LN, headers=headers)
            assert err.value.status() == f"StatusCode.{status}", err.value
    c.close()


def test_log_settings_round_trip(server, client):
    before = client.get_log_settings(as_json=True)["settings"]
    assert before["log_info"]["bool_param"] is True
    client.update_log_settings({"log_verbose_level": 1})
    assert server.http.get("/v2/logging").json()["log_verbose_level"] == 1
    client.update_log_settings({"log_verbose_level": 0})
    with pytest.raises(InferenceServerException) as err:
        client.update_log_settings({"log_colour": True})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "log_colour" in err.value.message()


# --- HTTP and gRPC together -----------------------------------------------------------------
def test_http_and_grpc_clients_share_one_model(server):
    """32 clients x 50 requests of unique inputs, half over each transport, every row checked
    bitwise against the kernel in this process (batched or not, the rows are the same)."""
    layer = local_layer(LN)
    failures: list[str] = []
    lock = threading.Lock()

    def grpc_worker(k: int) -> None:
        c = grpcclient.InferenceServerClient(server.grpc_url)
        for i in range(50):
            x = sample_input(LN, 1 + (k + i) % 3, "FP32", seed=10_000 + k * 100 + i)
            y = c.infer(LN, [_input(x, "FP32")]).as_numpy("output")
            if y.tobytes() != layer.apply(x).tobytes():
                with lock:
                    failures.append(f"grpc {k}/{i}")
        c.close()

    def http_worker(k: int) -> None:
        for i in range(50):
            x = sample_input(LN, 1 + (k + i) % 3, "FP32", seed=20_000 + k * 100 + i)
            body, headers = infer_binary_body(x, "FP32")
            resp = server.http.post(f"/v2/models/{LN}/infer", content=body, headers=headers)
            n = int(resp.headers["inference-header-content-length"])
            if resp.content[n:] != layer.apply(x).tobytes():
                with lock:
                    failures.append(f"http {k}/{i}")

    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(grpc_worker if k % 2 else http_worker, k) for k in range(32)]
        for f in futures:
            f.result()
    assert not failures, failures[:5]
