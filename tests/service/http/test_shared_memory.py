"""Triton's system shared memory extension with tritonclient.utils.shared_memory, over HTTP
and gRPC, against the app with allow_shared_memory served from a thread of this process (the
clients need sockets); the hostile cases
(unknown regions, offsets past the end, keys that are not shared-memory objects, regions
unregistered while in use); the extension being off by default; and CUDA shared memory,
not served, answering as Triton does when none is registered (registering refused)."""

from __future__ import annotations

import logging
import os
import uuid

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from service_helpers import in_thread, local_layer, sample_input
from tritonclient.utils import InferenceServerException

LN = "layer_norm_1024"


@pytest.fixture(scope="module")
def server():
    with in_thread(grpc=True, allow_shared_memory=True) as srv:
        yield srv


@pytest.fixture(params=["http", "grpc"])
def client(request, server):
    if request.param == "http":
        c = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    else:
        c = grpcclient.InferenceServerClient(server.grpc_url)
    yield c
    c.unregister_system_shared_memory()
    c.close()


@pytest.fixture
def regions():
    made = []

    def make(nbytes: int):
        name = f"ns-{uuid.uuid4().hex[:10]}"
        handle = shm.create_shared_memory_region(name, "/" + name, nbytes)
        made.append(handle)
        return name, handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def _module(c):
    return grpcclient if isinstance(c, grpcclient.InferenceServerClient) else httpclient


def _infer(c, x: np.ndarray, datatype: str, in_region: str, out_region: str | None,
           out_size: int, out_offset: int = 0):
    mod = _module(c)
    inp = mod.InferInput("input", list(x.shape), datatype)
    inp.set_shared_memory(in_region, x.nbytes)
    out = mod.InferRequestedOutput("output")
    if out_region is not None:
        out.set_shared_memory(out_region, out_size, offset=out_offset)
    return c.infer(LN, [inp], outputs=[out])


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "FP64"])
def test_input_and_output_through_shared_memory(client, regions, datatype):
    x = sample_input(LN, 3, datatype, seed=11)
    in_name, in_handle = regions(x.nbytes)
    out_name, out_handle = regions(x.nbytes + 64)
    shm.set_shared_memory_region(in_handle, [x])
    client.register_system_shared_memory(in_name, "/" + in_name, x.nbytes)
    client.register_system_shared_memory(out_name, "/" + out_name, x.nbytes + 64)
    status = client.get_system_shared_memory_status()
    assert in_name in str(status) and out_name in str(status)
    result = _infer(client, x, datatype, in_name, out_name, x.nbytes + 64)
    # The data is in the region, not the reply, which (as Triton's) has the output's name,
    # datatype and shape and no parameters; over gRPC, its raw_output_contents entry is
    # empty (Triton's C++ client, perf_analyzer's, needs one entry per output).
    output = result.get_output("output")
    if isinstance(output, dict):
        assert output == {"name": "output", "datatype": datatype, "shape": list(x.shape)}
    else:
        assert (output.name, output.datatype, list(output.shape)) == \
            ("output", datatype, list(x.shape))
        assert not output.parameters
        assert list(result.get_response().raw_output_contents) == [b""]
    y = shm.get_contents_as_numpy(out_handle, x.dtype, x.shape)
    assert y.tobytes() == local_layer(LN).apply(x).tobytes()


def test_output_at_an_offset_and_input_only(client, regions):
    x = sample_input(LN, 2, "FP32", seed=12)
    name, handle = regions(x.nbytes + 4096 + x.nbytes)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory(name, "/" + name, x.nbytes + 4096 + x.nbytes)
    _infer(client, x, "FP32", name, name, x.nbytes, out_offset=x.nbytes + 4096)
    y = shm.get_contents_as_numpy(handle, np.float32, x.shape, offset=x.nbytes + 4096)
    expected = local_layer(LN).apply(x)
    assert y.tobytes() == expected.tobytes()
    # Input from shared memory, output in the reply.
    result = _infer(client, x, "FP32", name, None, 0)
    assert result.as_numpy("output").tobytes() == expected.tobytes()


def _refused(call, status_words: tuple[str, str], words: str) -> None:
    with pytest.raises(InferenceServerException) as err:
        call()
    assert err.value.status() in status_words, err.value
    assert words in err.value.message(), err.value.message()


BAD = ("400", "StatusCode.INVALID_ARGUMENT")


def test_hostile_registrations(client, regions):
    name, _ = regions(4096)
    _refused(lambda: client.register_system_shared_memory("r", "/no-such-object", 64), BAD,
             "not a shared-memory object")
    _refused(lambda: client.register_system_shared_memory("r", "/../etc/passwd", 64), BAD,
             "key")
    _refused(lambda: client.register_system_shared_memory("r", "/" + name, 8192), BAD,
             "past the end")
    _refused(lambda: client.register_system_shared_memory("r", "/" + name, 64, offset=4090),
             BAD, "past the end")
    client.register_system_shared_memory("r", "/" + name, 4096)
    _refused(lambda: client.register_system_shared_memory("r", "/" + name, 64), BAD,
             "already registered")
    _refused(lambda: client.unregister_system_shared_memory("never"), BAD, "not registered")


def test_hostile_tensors(client, regions):
    x = sample_input(LN, 1, "FP32", seed=13)
    name, handle = regions(x.nbytes)
    shm.set_shared_memory_region(handle, [x])
    client.register_system_shared_memory(name, "/" + name, x.nbytes)
    mod = _module(client)

    def infer_with(in_region: str, size: int, offset: int = 0, out=None):
        inp = mod.InferInput("input", list(x.shape), "FP32")
        inp.set_shared_memory(in_region, size, offset=offset)
        return client.infer(LN, [inp], outputs=out)

    _refused(lambda: infer_with("unknown", x.nbytes), BAD, "not a registered shared memory")
    _refused(lambda: infer_with(name, x.nbytes, offset=8), BAD, "past the end")
    _refused(lambda: infer_with(name, x.nbytes - 4), BAD, "needs 4096")
    small = mod.InferRequestedOutput("output")
    small.set_shared_memory(name, 100)
    _refused(lambda: infer_with(name, x.nbytes, out=[small]), BAD, "needs 4096")
    # The server still answers good requests.
    assert _infer(client, x, "FP32", name, None, 0).as_numpy("output").tobytes() == \
        local_layer(LN).apply(x).tobytes()


def test_unregistered_while_in_use(server, regions):
    """Requests racing an unregister either succeed or get a clear 400; the server lives."""
    import concurrent.futures as cf

    x = sample_input(LN, 64, "FP32", seed=14)
    name, handle = regions(x.nbytes)
    shm.set_shared_memory_region(handle, [x])
    c = grpcclient.InferenceServerClient(server.grpc_url)  # thread-safe, unlike http's
    outcomes = []
    for _ in range(5):
        c.register_system_shared_memory(name, "/" + name, x.nbytes)
        with cf.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(_infer, c, x, "FP32", name, None, 0) for _ in range(16)]
            c.unregister_system_shared_memory(name)
            for f in futures:
                try:
                    outcomes.append(f.result().as_numpy("output").tobytes()
                                    == local_layer(LN).apply(x).tobytes())
                except InferenceServerException as exc:
                    assert exc.status() == "StatusCode.INVALID_ARGUMENT", exc
                    assert "not a registered" in exc.message()
                    outcomes.append("refused")
    assert all(o in (True, "refused") for o in outcomes), outcomes
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    c.close()


UNSUPPORTED = ("501", "StatusCode.UNIMPLEMENTED")


def _cuda_answers_none_registered(c) -> None:
    """CUDA shared memory, not served: nothing is ever registered. As Triton answers then:
    an empty status, NOT_FOUND for a named region, and unregistering (all, or any name)
    succeeds with nothing to do; registering is refused, pointing at system shared memory."""
    status = c.get_cuda_shared_memory_status()
    assert (status if isinstance(c, httpclient.InferenceServerClient)
            else list(status.regions)) == []
    _refused(lambda: c.get_cuda_shared_memory_status("r"), ("404", "StatusCode.NOT_FOUND"),
             "no CUDA shared memory region")
    c.unregister_cuda_shared_memory()
    c.unregister_cuda_shared_memory("never-registered")
    _refused(lambda: c.register_cuda_shared_memory("r", b"\0" * 64, 0, 1024), UNSUPPORTED,
             "CUDA shared memory is not supported by this server")
    _refused(lambda: c.register_cuda_shared_memory("r", b"\0" * 64, 0, 1024), UNSUPPORTED,
             "use system shared memory")


def test_cuda_shared_memory_is_answered_not_served(client, caplog):
    with caplog.at_level("WARNING"):
        _cuda_answers_none_registered(client)
    # A refusal, not a failure: no traceback, no ERROR line (grpc's generated base class
    # raised NotImplementedError here, logged with its traceback).
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_off_by_default(regions):
    name, _ = regions(64)
    with in_thread(grpc=True) as srv:
        assert "system_shared_memory" not in httpx.get(srv.url + "/v2").json()["extensions"]
        for c in (httpclient.InferenceServerClient(srv.url.removeprefix("http://")),
                  grpcclient.InferenceServerClient(srv.grpc_url)):
            _refused(lambda c=c: c.register_system_shared_memory(name, "/" + name, 64),
                     ("403", "StatusCode.PERMISSION_DENIED"), "--allow-shared-memory")
            _cuda_answers_none_registered(c)  # the same with system shared memory off
            c.close()
    assert os.path.exists("/dev/shm/" + name)  # untouched
