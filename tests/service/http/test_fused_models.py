"""The demo repository's fused models (``add_rms_norm_512``, ``add_layer_norm_256``: two
inputs, two outputs) and Gemma's ``rms_norm`` with offset over HTTP, the app in this process
(issue 21, SPEC 9): metadata and Triton configuration list every input and output; JSON,
binary and mixed requests get the outputs they name (none named: both), bitwise the kernel's
and within the SPEC tolerance of the float64 reference; concurrent requests are batched row
aligned; bad requests are 400s naming the input or output."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format
from service_fused_cases import FUSED, OUTPUTS, binary_infer_body
from service_fused_cases import fused_expected as expected
from service_fused_cases import fused_pair as pair
from service_helpers import DEMO, demo_config, demo_params, in_process
from tritonclient.grpc import model_config_pb2
from tritonclient.http import InferResult

from normserve.kernels.dtypes import DATATYPES, datatype_name
from normserve.kernels.oracle import assert_close, reference
from normserve.repository import load_model

GEMMA = "gemma_rms_norm_256"


@pytest.fixture(scope="module")
def http() -> Any:
    with in_process() as app:
        yield app.http


def json_body(*tensors: tuple[str, np.ndarray], **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": n, "shape": list(a.shape), "datatype": datatype_name(a.dtype),
                        "data": a.astype(np.float64).ravel().tolist()} for n, a in tensors],
            **extra}


def binary_body(*tensors: tuple[str, np.ndarray], outputs: list[str] | None = None
                ) -> tuple[bytes, dict[str, str]]:
    body, length = binary_infer_body(*tensors, outputs=None if outputs is None else [
        {"name": o, "parameters": {"binary_data": True}} for o in outputs])
    return body, {"Inference-Header-Content-Length": length}


def result(resp: Any) -> InferResult:
    assert resp.status_code == 200, resp.text
    length = resp.headers.get("inference-header-content-length")
    return InferResult.from_response_body(resp.content,
                                          header_length=None if length is None else int(length))


def output_names(res: InferResult) -> list[str]:
    return [o["name"] for o in res.get_response()["outputs"]]


@pytest.mark.parametrize("name", sorted(FUSED))
def test_metadata_and_config_list_both_inputs_and_outputs(http: Any, name: str) -> None:
    n = FUSED[name]
    meta = http.get(f"/v2/models/{name}").json()
    assert [(t["name"], t["shape"]) for t in meta["inputs"]] == [
        ("input", [-1, n]), ("residual", [-1, n])]
    assert [(t["name"], t["shape"]) for t in meta["outputs"]] == [
        ("output", [-1, n]), ("residual_out", [-1, n])]
    config = json_format.ParseDict(http.get(f"/v2/models/{name}/config").json(),
                                   model_config_pb2.ModelConfig())  # strictly Triton's schema
    assert [(t.name, list(t.dims)) for t in config.input] == [("input", [n]), ("residual", [n])]
    assert [(t.name, list(t.dims)) for t in config.output] == [
        ("output", [n]), ("residual_out", [n])]
    assert config.parameters["kind"].string_value == demo_config(name)["kind"]


@pytest.mark.parametrize("datatype", list(DATATYPES))
@pytest.mark.parametrize("name", sorted(FUSED))
def test_json_request_naming_no_output_gets_both(http: Any, name: str, datatype: str) -> None:
    x, r = pair(name, 3, 1, DATATYPES[datatype])
    res = result(http.post(f"/v2/models/{name}/infer",
                           json=json_body(("input", x), ("residual", r), id="j")))
    assert output_names(res) == list(OUTPUTS) and res.get_response()["id"] == "j"
    want = expected(name, x, r)
    for o in OUTPUTS:
        got = res.as_numpy(o)
        assert list(got.shape) == [3, FUSED[name]]
        assert got.astype(x.dtype).tobytes() == want[o].tobytes()


@pytest.mark.parametrize("named", [["output"], ["residual_out"], ["residual_out", "output"]])
@pytest.mark.parametrize("name", sorted(FUSED))
def test_binary_request_gets_exactly_the_outputs_it_names(http: Any, name: str,
                                                         named: list[str]) -> None:
    x, r = pair(name, 2, 2)
    body, headers = binary_body(("residual", r), ("input", x), outputs=named)
    res = result(http.post(f"/v2/models/{name}/infer", content=body, headers=headers))
    assert output_names(res) == named
    want = expected(name, x, r)
    for o in named:
        assert res.as_numpy(o).tobytes() == want[o].tobytes()


def test_one_output_binary_the_other_json(http: Any) -> None:
    name = "add_rms_norm_512"
    x, r = pair(name, 2, 3, np.float16)
    body = json_body(("input", x), ("residual", r), outputs=[
        {"name": "output", "parameters": {"binary_data": False}},
        {"name": "residual_out", "parameters": {"binary_data": True}}])
    res = result(http.post(f"/v2/models/{name}/infer", json=body))
    want = expected(name, x, r)
    assert res.as_numpy("output").tobytes() == want["output"].tobytes()
    assert res.as_numpy("residual_out").tobytes() == want["residual_out"].tobytes()


@pytest.mark.parametrize("name", sorted(FUSED))
def test_concurrent_requests_share_batches_and_get_their_own_rows(http: Any,
                                                                   name: str) -> None:
    pairs = [pair(name, 1 + k % 4, 100 + k) for k in range(24)]

    def post(k: int) -> InferResult:
        x, r = pairs[k]
        body, headers = binary_body(("input", x), ("residual", r))
        return result(http.post(f"/v2/models/{name}/infer", content=body, headers=headers))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, range(len(pairs))))
    for (x, r), res in zip(pairs, results, strict=True):
        want = expected(name, x, r)
        for o in OUTPUTS:
            assert res.as_numpy(o).tobytes() == want[o].tobytes()


def test_gemma_rms_norm_with_offset_is_served(http: Any) -> None:
    x = (np.random.default_rng(4).standard_normal((2, 256)) * 2).astype(np.float32)
    res = result(http.post(f"/v2/models/{GEMMA}/infer", json=json_body(("x", x))))
    assert output_names(res) == ["output"]
    got = res.as_numpy("output")
    assert got.tobytes() == load_model(DEMO / GEMMA)[1].apply(x).tobytes()
    assert_close(got, reference("rms_norm", x, demo_params(GEMMA), demo_config(GEMMA)),
                 np.float32)


def _x(rows: int = 2, n: int = 512, dtype: Any = np.float32) -> np.ndarray:
    return np.full((rows, n), 0.5, dtype)


BAD = [
    ("residual-missing", json_body(("input", _x())), "input 'residual' is missing"),
    ("input-missing", json_body(("residual", _x())), "input 'input' is missing"),
    ("misnamed", json_body(("x", _x()), ("residual", _x())), "inputs[0].name: unknown input 'x'"),
    ("third-input", json_body(("input", _x()), ("residual", _x()), ("bias", _x())),
     "inputs[2].name: unknown input 'bias'"),
    ("rows-differ", json_body(("input", _x(2)), ("residual", _x(3))),
     "inputs[1].shape: input 'residual' has shape [3, 512] but 'input' has [2, 512]"),
    ("features-differ", json_body(("input", _x()), ("residual", _x(2, 256))),
     "inputs[1].shape: input 'residual'"),
    ("dtypes-differ", json_body(("input", _x()), ("residual", _x(dtype=np.float64))),
     "inputs[1].datatype: input 'residual' is FP64 but 'input' is FP32"),
    ("wrong-features", json_body(("input", _x(2, 256)), ("residual", _x(2, 256))),
     "inputs[0].shape"),
    ("unknown-output", json_body(("input", _x()), ("residual", _x()),
                                 outputs=[{"name": "residual"}]),
     "outputs[0].name: unknown output 'residual'"),
    ("duplicate-output", json_body(("input", _x()), ("residual", _x()),
                                   outputs=[{"name": "output"}, {"name": "output"}]),
     "outputs[1].name: duplicate output 'output'"),
]


@pytest.mark.parametrize(("body", "words"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_requests_are_400s_naming_the_input_or_output(http: Any, body: dict,
                                                          words: str) -> None:
    resp = http.post("/v2/models/add_rms_norm_512/infer", json=body)
    assert resp.status_code == 400, resp.text
    assert words in resp.json()["error"], resp.json()


def test_binary_bytes_must_add_up_across_inputs(http: Any) -> None:
    x, r = pair("add_rms_norm_512", 1, 5)
    body, headers = binary_body(("input", x), ("residual", r))
    for raw, words in ((body + b"\0" * 8, "no input claims"),
                       (body[:-8], "inputs[1].parameters.binary_data_size")):
        resp = http.post("/v2/models/add_rms_norm_512/infer", content=raw, headers=headers)
        assert resp.status_code == 400 and words in resp.json()["error"], resp.text


def test_a_one_input_model_refuses_a_residual(http: Any) -> None:
    resp = http.post("/v2/models/rms_norm_512/infer",
                     json=json_body(("input", _x()), ("residual", _x())))
    assert resp.status_code == 400
    assert "exactly one input is required, got 2" in resp.json()["error"]


def test_v1_normalize_refuses_a_kind_of_two_inputs(http: Any) -> None:
    x = _x(1, 4)
    resp = http.post("/v1/normalize", json={
        "kind": "add_rms_norm", "normalized_shape": [4],
        "input": {"shape": [1, 4], "datatype": "FP32", "data": x.ravel().tolist()}})
    assert resp.status_code == 400 and resp.json()["error"].startswith("kind:"), resp.text


def test_a_fused_model_registered_at_run_time_is_served(model_repository: Any) -> None:
    """PUT /v1/models with a fused kind: served with its two inputs and outputs, and its
    ONNX export downloadable."""
    auth = {"Authorization": "Bearer t0ken"}
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    r = -x[::-1].copy()
    skip = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    with in_process(model_repository=str(model_repository), admin_token="t0ken") as app:
        resp = app.http.put("/v1/models/block", headers=auth, json={
            "kind": "add_layer_norm", "normalized_shape": [4], "input_shape": [4],
            "params": {"skip_bias": {"shape": [4], "datatype": "FP32",
                                     "data": skip.tolist()}}})
        assert resp.status_code == 201, resp.text
        assert [t["name"] for t in resp.json()["metadata"]["outputs"]] == list(OUTPUTS)
        res = result(app.http.post("/v2/models/block/infer",
                                   json=json_body(("input", x), ("residual", r))))
        layer = app.ctx.registry.get("block").layer
        want_y, want_h = layer.apply_all((x, r))
        assert res.as_numpy("output").tobytes() == want_y.tobytes()
        assert res.as_numpy("residual_out").tobytes() == want_h.tobytes()
        ref_y, ref_h = reference("add_layer_norm", (x, r), {"skip_bias": skip},
                                 {"normalized_shape": [4]})
        assert_close(want_y, ref_y, np.float32)
        assert_close(want_h, ref_h, np.float32)
        assert app.http.get("/v1/models/block/model.onnx").status_code == 200
