"""tritonclient.http and tritonclient.grpc, unmodified, against a real normserve process: the
fused demo models' two inputs and two outputs (issue 21), every output or the ones named,
JSON and binary, and both transports' refusals naming the missing input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from service_fused_cases import (
    FUSED,
    OUTPUTS,
    client_module,
    fused_expected,
    fused_inputs,
    fused_pair,
    triton_client,
)
from service_helpers import running_server
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def server() -> Any:
    with running_server() as srv:
        yield srv


@pytest.fixture(params=["grpc", "http"])
def client(request: Any, server: Any) -> Any:
    c = triton_client(request.param, server)
    yield c
    c.close()


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("name", sorted(FUSED))
def test_two_inputs_two_outputs(client: Any, name: str, binary: bool) -> None:
    mod = client_module(client)
    x, r = fused_pair(name, 3, seed=7)
    inputs = fused_inputs(mod, x, r, binary=binary)
    want = fused_expected(name, x, r)
    every = client.infer(name, inputs, request_id="both")
    for o in OUTPUTS:
        assert every.as_numpy(o).tobytes() == want[o].tobytes()
    out = (httpclient.InferRequestedOutput("residual_out", binary_data=binary)
           if mod is httpclient else grpcclient.InferRequestedOutput("residual_out"))
    one = client.infer(name, inputs, outputs=[out])
    assert one.as_numpy("residual_out").tobytes() == want["residual_out"].tobytes()
    assert one.as_numpy("output") is None


def test_a_missing_residual_is_refused_naming_it(client: Any) -> None:
    mod = client_module(client)
    x = np.zeros((1, 512), np.float32)
    inp = mod.InferInput("input", [1, 512], "FP32")
    inp.set_data_from_numpy(x)
    with pytest.raises(InferenceServerException) as info:
        client.infer("add_rms_norm_512", [inp])
    assert "input 'residual' is missing" in info.value.message()
