"""KServe's own clients (kserve's InferenceRESTClient with protocol v2, InferenceGRPCClient),
unmodified, against a real normserve process (the request fields those clients add to the
body: http/test_kserve_fields.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
from service_helpers import (
    assert_matches_reference,
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
