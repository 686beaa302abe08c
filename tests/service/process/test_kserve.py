"""KServe's own clients (kserve's InferenceRESTClient with protocol v2, InferenceGRPCClient),
unmodified, against a real normserve process (the request fields those clients add to the
body: http/test_kserve_fields.py)."""

from __future__ import annotations

import importlib.util
import json
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
# kserve clients run in a child process that imports only kserve, and hand back arrays. One
# child runs every case (kserve's import is the slow part), each with a client of its own.
CLIENT = """
import asyncio, json, sys
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig

async def case(transport, target, datatype, binary, x_path, y_path):
    x = np.load(x_path)
    inp = InferInput("input", list(x.shape), datatype)
    if transport == "rest":
        inp.set_data_from_numpy(x, binary_data=binary)
    else:
        inp.set_data_from_numpy(x)
    request = InferRequest(model_name="%s", infer_inputs=[inp], request_id="k-1")
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

async def main():
    for args in json.loads(sys.argv[1]):
        await case(*args)

asyncio.run(main())
""" % ((LN,) * 4)

REST_CASES = [(datatype, binary) for datatype in ("FP32", "FP64") for binary in (False, True)]
GRPC_CASES = ["FP16", "FP32", "FP64"]


def _rest_input(datatype: str) -> np.ndarray:
    return sample_input(LN, 3, datatype, seed=4)


def _grpc_input(datatype: str) -> np.ndarray:
    return sample_input(LN, 2, datatype, seed=5)


@pytest.fixture(scope="module")
def answers(tmp_path_factory) -> dict[tuple, np.ndarray]:
    """What kserve's clients got back from a real server, for every case of this module."""
    if importlib.util.find_spec("kserve") is None:  # found, not imported (see CLIENT)
        pytest.skip("kserve is not installed")
    work = tmp_path_factory.mktemp("kserve")
    with running_server() as server:
        cases, paths = [], {}
        for key, transport, target, x, datatype, binary in (
                *((("rest", dt, b), "rest", server.url, _rest_input(dt), dt, b)
                  for dt, b in REST_CASES),
                *((("grpc", dt), "grpc", server.grpc_url, _grpc_input(dt), dt, False)
                  for dt in GRPC_CASES)):
            x_path, y_path = work / f"x{len(cases)}.npy", work / f"y{len(cases)}.npy"
            np.save(x_path, x)
            cases.append((transport, target, datatype, binary, str(x_path), str(y_path)))
            paths[key] = y_path
        proc = subprocess.run([sys.executable, "-c", CLIENT, json.dumps(cases)],
                              capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {key: np.load(path) for key, path in paths.items()}


@pytest.mark.parametrize(("datatype", "binary"), REST_CASES)
def test_rest_client_v2(answers, datatype, binary):
    x = _rest_input(datatype)
    y = answers[("rest", datatype, binary)]
    assert_matches_reference(LN, x, y, datatype)
    assert y.tobytes() == local_layer(LN).apply(x).tobytes()


@pytest.mark.parametrize("datatype", GRPC_CASES)
def test_grpc_client(answers, datatype):
    x = _grpc_input(datatype)
    y = answers[("grpc", datatype)]
    assert y.tobytes() == local_layer(LN).apply(x).tobytes()
