"""tritonclient.http, unmodified, against a real normserve process on a real socket: every
demo kind and dtype, JSON and binary tensors, checked against the float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from service_helpers import (
    SAMPLE_SHAPES,
    assert_matches_reference,
    check_triton_config,
    running_server,
    sample_input,
)
from tritonclient.utils import InferenceServerException

from normserve.kernels.dtypes import DATATYPES

KINDS = sorted(SAMPLE_SHAPES)
CASES = [(name, dt, binary) for name in KINDS for dt in DATATYPES for binary in (False, True)
         if binary or dt != "BF16"]  # tritonclient sends BF16 only as binary data


@pytest.fixture(scope="module")
def client():
    with running_server() as server:
        c = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
        yield c
        c.close()


@pytest.mark.parametrize(("name", "datatype", "binary"), CASES)
def test_infer_every_kind_and_dtype(client, name, datatype, binary):
    seed = KINDS.index(name) * 10 + list(DATATYPES).index(datatype)
    x = sample_input(name, 3, datatype, seed=seed)
    inp = httpclient.InferInput("x", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("output", binary_data=binary)
    result = client.infer(name, [inp], outputs=[out], request_id=f"req-{name}")
    y = result.as_numpy("output")
    assert result.get_response()["id"] == f"req-{name}"
    assert result.get_response()["model_name"] == name
    assert_matches_reference(name, x, y, datatype)


def test_default_outputs_come_back_binary(client):
    """No outputs requested: tritonclient sets binary_data_output, the reply is binary."""
    x = sample_input("layer_norm_1024", 2, "FP32", seed=1)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("layer_norm_1024", [inp])
    params = result.get_output("output")["parameters"]
    assert params["binary_data_size"] == x.nbytes
    assert_matches_reference("layer_norm_1024", x, result.as_numpy("output"), "FP32")


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client, algorithm):
    x = sample_input("rms_norm_512", 4, "FP32", seed=2)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("rms_norm_512", [inp], request_compression_algorithm=algorithm)
    assert_matches_reference("rms_norm_512", x, result.as_numpy("output"), "FP32")


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata()["name"] == "normserve"
    for name in KINDS:
        assert client.is_model_ready(name)
        assert client.is_model_ready(name, model_version="1")
        meta = client.get_model_metadata(name)
        assert meta["name"] == name
        assert meta["inputs"][0]["shape"][0] == -1
        assert meta["outputs"][0]["name"] == "output"
        check_triton_config(client.get_model_config(name), name)
    assert not client.is_model_ready("layer_norm_1024", model_version="2")


def test_errors_surface_as_exceptions(client):
    x = np.zeros((1, 7), np.float32)
    inp = httpclient.InferInput("input", [1, 7], "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as info:
        client.infer("layer_norm_1024", [inp])
    assert info.value.status() == "400"
    assert "shape" in info.value.message()
    with pytest.raises(InferenceServerException) as info:
        client.infer("no_such_model", [inp])
    assert info.value.status() == "404"
