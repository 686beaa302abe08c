"""The demo repository's fused models (two inputs, two outputs) through tritonclient, unmodified:
gRPC (sync and streaming) and HTTP, two ``InferInput``s and ``InferRequestedOutput``s, system
shared memory for inputs and outputs, Triton's model configuration, and bad requests answered
INVALID_ARGUMENT / 400 naming the input or output; the app served from a thread of this
process (tritonclient needs sockets), with shared memory allowed (issue 21, SPEC 7 and 9)."""

from __future__ import annotations

import queue
import uuid
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.utils.shared_memory as shm
from service_fused_cases import FUSED, OUTPUTS, client_module, triton_client
from service_fused_cases import fused_expected as expected
from service_fused_cases import fused_inputs as inputs
from service_fused_cases import fused_pair as pair
from service_helpers import in_thread
from tritonclient.utils import InferenceServerException


@pytest.fixture(scope="module")
def server() -> Any:
    with in_thread(grpc=True, allow_shared_memory=True) as srv:
        yield srv


@pytest.fixture(params=["grpc", "http"])
def client(request: Any, server: Any) -> Any:
    c = triton_client(request.param, server)
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.mark.parametrize("named", [None, ["output"], ["residual_out"], ["residual_out", "output"]])
@pytest.mark.parametrize("name", sorted(FUSED))
def test_two_infer_inputs_and_requested_outputs(client: Any, name: str,
                                                named: list[str] | None) -> None:
    mod = client_module(client)
    x, r = pair(name, 3, seed=1)
    outputs = None if named is None else [mod.InferRequestedOutput(o) for o in named]
    res = client.infer(name, inputs(mod, x, r), outputs=outputs)
    want = expected(name, x, r)
    for o in named or OUTPUTS:
        assert res.as_numpy(o).tobytes() == want[o].tobytes()
    for o in set(OUTPUTS) - set(named or OUTPUTS):
        assert res.as_numpy(o) is None  # not asked for: not answered


@pytest.mark.parametrize("datatype", ["FP16", "FP64"])
def test_other_datatypes(client: Any, datatype: str) -> None:
    mod = client_module(client)
    name = "add_layer_norm_256"
    x, r = pair(name, 2, seed=2, dtype=np.float16 if datatype == "FP16" else np.float64)
    res = client.infer(name, inputs(mod, x, r, datatype))
    want = expected(name, x, r)
    for o in OUTPUTS:
        assert res.as_numpy(o).tobytes() == want[o].tobytes()


@pytest.mark.parametrize("name", sorted(FUSED))
def test_model_metadata_and_config(client: Any, name: str) -> None:
    n = FUSED[name]
    if isinstance(client, grpcclient.InferenceServerClient):
        meta = client.get_model_metadata(name, as_json=True)
        config = client.get_model_config(name, as_json=True)["config"]
    else:
        meta = client.get_model_metadata(name)
        config = client.get_model_config(name)
    assert [t["name"] for t in meta["inputs"]] == ["input", "residual"]
    assert [t["name"] for t in meta["outputs"]] == list(OUTPUTS)
    assert [[int(d) for d in t["shape"]] for t in meta["outputs"]] == [[-1, n]] * 2
    assert [t["name"] for t in config["input"]] == ["input", "residual"]
    assert [t["name"] for t in config["output"]] == list(OUTPUTS)
    assert [[int(d) for d in t["dims"]] for t in config["input"]] == [[n]] * 2


def test_inputs_and_outputs_in_shared_memory(client: Any) -> None:
    mod = client_module(client)
    name = "add_rms_norm_512"
    x, r = pair(name, 4, seed=3)
    n = x.nbytes
    key = f"ns-{uuid.uuid4().hex[:10]}"
    handle = shm.create_shared_memory_region(key, "/" + key, 4 * n)
    try:
        shm.set_shared_memory_region(handle, [x, r])
        client.register_system_shared_memory(key, "/" + key, 4 * n)
        ins = [mod.InferInput(i, list(x.shape), "FP32") for i in ("input", "residual")]
        ins[0].set_shared_memory(key, n)
        ins[1].set_shared_memory(key, n, offset=n)
        outs = [mod.InferRequestedOutput(o) for o in OUTPUTS]
        outs[0].set_shared_memory(key, n, offset=2 * n)
        outs[1].set_shared_memory(key, n, offset=3 * n)
        res = client.infer(name, ins, outputs=outs)
        want = expected(name, x, r)
        for k, o in enumerate(OUTPUTS, start=2):
            got = shm.get_contents_as_numpy(handle, np.float32, list(x.shape), offset=k * n)
            assert got.tobytes() == want[o].tobytes()
            assert res.get_output(o) is not None
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)


def test_one_output_in_shared_memory_the_other_in_the_answer(client: Any) -> None:
    mod = client_module(client)
    name = "add_layer_norm_256"
    x, r = pair(name, 2, seed=4)
    key = f"ns-{uuid.uuid4().hex[:10]}"
    handle = shm.create_shared_memory_region(key, "/" + key, x.nbytes)
    try:
        client.register_system_shared_memory(key, "/" + key, x.nbytes)
        outs = [mod.InferRequestedOutput(o) for o in OUTPUTS]
        outs[0].set_shared_memory(key, x.nbytes)
        res = client.infer(name, inputs(mod, x, r), outputs=outs)
        want = expected(name, x, r)
        assert res.as_numpy("residual_out").tobytes() == want["residual_out"].tobytes()
        got = shm.get_contents_as_numpy(handle, np.float32, list(x.shape))
        assert got.tobytes() == want["output"].tobytes()
    finally:
        client.unregister_system_shared_memory()
        shm.destroy_shared_memory_region(handle)


def test_grpc_stream_of_two_input_requests(server: Any) -> None:
    name = "add_rms_norm_512"
    answers: queue.Queue = queue.Queue()
    c = grpcclient.InferenceServerClient(server.grpc_url)
    pairs = [pair(name, 1 + k % 3, seed=10 + k) for k in range(6)]
    try:
        c.start_stream(callback=lambda result, error: answers.put((result, error)))
        for k, (x, r) in enumerate(pairs):
            c.async_stream_infer(name, inputs(grpcclient, x, r), request_id=str(k))
        got = [answers.get(timeout=60) for _ in pairs]
    finally:
        c.stop_stream()
        c.close()
    for result, error in got:
        assert error is None, error
        x, r = pairs[int(result.get_response().id)]
        want = expected(name, x, r)
        for o in OUTPUTS:
            assert result.as_numpy(o).tobytes() == want[o].tobytes()


BAD = [
    ("residual-missing", ["input"], {}, "input 'residual' is missing"),
    ("unknown-output", ["input", "residual"], {"outputs": ["residual"]},
     "outputs[0].name: unknown output 'residual'"),
    ("rows-differ", ["input", "residual"], {"residual_rows": 3},
     "inputs[1].shape: input 'residual'"),
    ("dtypes-differ", ["input", "residual"], {"residual_dtype": np.float64},
     "inputs[1].datatype: input 'residual' is FP64"),
]


@pytest.mark.parametrize(("names", "change", "words"), [c[1:] for c in BAD],
                         ids=[c[0] for c in BAD])
def test_bad_requests_name_the_input_or_output(client: Any, names: list[str], change: dict,
                                               words: str) -> None:
    mod = client_module(client)
    name = "add_rms_norm_512"
    made = []
    for n in names:
        rows = change.get("residual_rows", 2) if n == "residual" else 2
        dtype = change.get("residual_dtype", np.float32) if n == "residual" else np.float32
        a = np.full((rows, 512), 0.5, dtype)
        inp = mod.InferInput(n, list(a.shape), "FP64" if dtype == np.float64 else "FP32")
        inp.set_data_from_numpy(a)
        made.append(inp)
    outputs = [mod.InferRequestedOutput(o) for o in change.get("outputs", [])] or None
    with pytest.raises(InferenceServerException) as info:
        client.infer(name, made, outputs=outputs)
    assert words in info.value.message(), info.value.message()
    if mod is grpcclient:
        assert info.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    else:
        assert info.value.status() == "400"
    x, r = pair(name, 1, seed=5)  # and the server still answers right
    assert client.infer(name, inputs(mod, x, r)).as_numpy("output").tobytes() == \
        expected(name, x, r)["output"].tobytes()
