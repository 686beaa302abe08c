"""KServe's own clients (kserve's InferenceRESTClient with protocol v2, InferenceGRPCClient),
unmodified, against a real normserve; and the request fields those clients add to the body
(``model_name``, ``model_version``, their own ``parameters``) over plain HTTP."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import httpx
import numpy as np
import pytest
from service_helpers import (
    assert_matches_reference,
    infer_json_body,
    local_layer,
    running_server,
    sample_input,
)

LN = "layer_norm_1024"

# kserve's generated protobuf module and tritonclient's both register the messages of the
# ``inference`` package in protobuf's default pool, so one process cannot import both: the
# kserve clients run in a child process that imports only kserve, and hand back arrays.
CLIENT = """
import asyncio, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

transport, target, datatype, binary, x_path, y_path = sys.argv[1:]
x = np.load(x_path)
inp = InferInput("input", list(x.shape), datatype)
if transport == "rest":
    inp.set_data_from_numpy(x, binary_data=binary == "1")
else:
    inp.set_data_from_numpy(x)
request = InferRequest(model_name="%s", infer_inputs=[inp], request_id="k-1")

async def main():
    if transport == "rest":
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        assert await client.is_server_ready(target)
        assert await client.is_model_ready(target, "%s")
        result = await client.infer(target, request, model_name="%s")
    else:
        client = InferenceGRPCClient(target, timeout=30)
        assert await client.is_server_ready()
        assert await client.is_model_ready("%s")
        result = await client.infer(request)
    await client.close()
    assert result.id == "k-1", result.id
    np.save(y_path, result.get_output_by_name("output").as_numpy())

asyncio.run(main())
""" % ((LN,) * 4)


@pytest.fixture(scope="module")
def server():
    with running_server() as srv:
        yield srv


def _kserve(tmp_path, transport: str, target: str, x: np.ndarray, datatype: str,
            binary: bool = False) -> np.ndarray:
    if importlib.util.find_spec("kserve") is None:  # found, not imported (see CLIENT)
        pytest.skip("kserve is not installed")
    x_path, y_path = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(x_path, x)
    proc = subprocess.run([sys.executable, "-c", CLIENT, transport, target, datatype,
                           str(int(binary)), str(x_path), str(y_path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.load(y_path)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_rest_client_v2(server, tmp_path, datatype, binary):
    x = sample_input(LN, 3, datatype, seed=4)
    y = _kserve(tmp_path, "rest", server.url, x, datatype, binary)
    assert_matches_reference(LN, x, y, datatype)
    assert y.tobytes() == local_layer(LN).apply(x).tobytes()


@pytest.mark.parametrize("datatype", ["FP16", "FP32", "FP64"])
def test_grpc_client(server, tmp_path, datatype):
    x = sample_input(LN, 2, datatype, seed=5)
    y = _kserve(tmp_path, "grpc", server.grpc_url, x, datatype)
    assert y.tobytes() == local_layer(LN).apply(x).tobytes()


def test_body_may_name_its_model_and_version(server):
    x = sample_input(LN, 1, "FP32", seed=6)
    for extra in ({"model_name": LN}, {"model_name": LN, "model_version": "1"},
                  {"model_version": ""}, {"parameters": {"content_type": "np", "x-y": 3}}):
        resp = httpx.post(f"{server.url}/v2/models/{LN}/infer",
                          json=infer_json_body(x, "FP32", **extra), timeout=30)
        assert resp.status_code == 200, (extra, resp.text)
    versioned = httpx.post(f"{server.url}/v2/models/{LN}/versions/1/infer",
                           json=infer_json_body(x, "FP32", model_version="1"), timeout=30)
    assert versioned.status_code == 200


@pytest.mark.parametrize(("extra", "words"), [
    ({"model_name": "rms_norm_512"}, "model_name: the body names 'rms_norm_512'"),
    ({"model_version": "2"}, "model_version: the body names '2'"),
    ({"model_name": 7}, "model_name: Input should be a valid string"),
])
def test_body_naming_another_model_is_refused(server, extra, words):
    x = sample_input(LN, 1, "FP32", seed=7)
    resp = httpx.post(f"{server.url}/v2/models/{LN}/infer",
                      json=infer_json_body(x, "FP32", **extra), timeout=30)
    assert resp.status_code == 400
    assert resp.json()["error"].startswith(words), resp.json()
