"""Every route of the service, the app in this process: health, metadata, the v1 routes,
admin, metrics and a repository with broken models (several workers and the CLI's own checks:
tests/service/process)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from service_helpers import (
    DEMO_MODELS,
    SAMPLE_SHAPES,
    assert_matches_reference,
    check_triton_config,
    decode_response,
    demo_config,
    demo_params,
    in_process,
    infer_binary_body,
    infer_json_body,
    reference_output,
    sample_input,
)

from normserve.kernels.oracle import assert_close
from normserve.repository import save_model

TOKEN = "admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, demo_repository):
    """The demo models in a writable repository of the test's own (registration writes)."""
    repo = tmp_path_factory.mktemp("repo") / "models"
    shutil.copytree(demo_repository, repo)
    with in_process(model_repository=str(repo), admin_token=TOKEN) as app:
        yield app


@pytest.fixture(scope="module")
def http(server):
    return server.http


def _tensor(a: np.ndarray, datatype: str = "FP32") -> dict:
    return {"shape": list(a.shape), "datatype": datatype,
            "data": a.astype(np.float64).ravel().tolist()}


def test_health_and_server_metadata(http):
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    meta = http.get("/v2").json()
    assert meta["name"] == "normserve" and "binary_tensor_data" in meta["extensions"]


@pytest.mark.parametrize("name", sorted(SAMPLE_SHAPES))
def test_model_metadata_ready_and_config(http, name):
    meta = http.get(f"/v2/models/{name}").json()
    assert meta["name"] == name and meta["versions"] == ["1"]
    assert http.get(f"/v2/models/{name}/versions/1").json() == meta
    assert http.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    assert http.get(f"/v2/models/{name}/versions/1/ready").status_code == 200
    config = http.get(f"/v2/models/{name}/config").json()
    check_triton_config(config, name)
    assert http.get(f"/v2/models/{name}/versions/1/config").json() == config


def test_versioned_infer_and_json_output(http):
    x = sample_input("instance_norm_4", 2, "FP64", seed=3)
    resp = http.post("/v2/models/instance_norm_4/versions/1/infer",
                     json=infer_json_body(x, "FP64", id="v1"))
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.json()["id"] == "v1" and resp.json()["model_version"] == "1"
    assert_matches_reference("instance_norm_4", x, decode_response(resp), "FP64")


def test_binary_request_json_response(http):
    x = sample_input("batch_norm_8", 3, "FP16", seed=4)
    body, headers = infer_binary_body(x, "FP16", binary_output=False)
    resp = http.post("/v2/models/batch_norm_8/infer", content=body, headers=headers)
    assert resp.status_code == 200 and "inference-header-content-length" not in resp.headers
    assert_matches_reference("batch_norm_8", x, decode_response(resp), "FP16")


def test_nan_and_inf_travel_in_binary_and_stay_in_their_rows(http):
    x = sample_input("layer_norm_1024", 3, "FP32", seed=8)
    x[1, 5] = np.nan
    x[2, 7] = np.inf
    body, headers = infer_binary_body(x, "FP32")
    y = decode_response(http.post("/v2/models/layer_norm_1024/infer", content=body,
                                  headers=headers))
    assert np.isnan(y[1]).all() and not np.isfinite(y[2]).any()
    assert_matches_reference("layer_norm_1024", x[:1], y[:1], "FP32")


@pytest.mark.parametrize("name", sorted(SAMPLE_SHAPES))
def test_normalize_inline_layer(http, name):
    cfg = {k: v for k, v in demo_config(name).items()
           if k not in ("input_shape", "max_batch_size", "max_queue_delay_us", "max_queue_size")}
    x = sample_input(name, 2, "FP32", seed=6)
    body = {**cfg, "params": {k: _tensor(v) for k, v in demo_params(name).items()},
            "input": _tensor(x)}
    resp = http.post("/v1/normalize", json=body)
    assert resp.status_code == 200, resp.text
    out = resp.json()["output"]
    assert out["datatype"] == "FP32" and out["shape"] == list(reference_output(name, x).shape)
    y = np.asarray(out["data"], np.float32).reshape(out["shape"])
    assert_matches_reference(name, x, y, "FP32")


def test_model_list(http):
    listed = http.get("/v1/models").json()
    assert sorted(m["name"] for m in listed["models"]) == DEMO_MODELS
    assert listed["skipped"] == []


def test_metrics_follow_triton_names(http):
    x = sample_input("rms_norm_512", 1, "FP32", seed=1)
    assert http.post("/v2/models/rms_norm_512/infer",
                     json=infer_json_body(x, "FP32")).status_code == 200
    resp = http.get("/metrics")
    assert resp.headers["content-type"].startswith("text/plain")
    for family in ("nv_inference_request_success", "nv_inference_request_failure",
                   "nv_inference_count", "nv_inference_exec_count",
                   "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
                   "nv_inference_compute_infer_duration_us",
                   "nv_inference_pending_request_count", "normserve_batch_size",
                   "normserve_queue_duration_seconds", "normserve_compute_duration_seconds",
                   "normserve_request_duration_seconds"):
        assert (f"# TYPE {family} " in resp.text or f"# TYPE {family}_total " in resp.text), family
    assert 'nv_inference_request_success_total{model="rms_norm_512",version="1"}' in resp.text


def test_register_infer_replace_delete(http):
    weight = np.linspace(0.5, 1.5, 16)
    bias = np.linspace(-1, 1, 16)
    body = {"kind": "layer_norm", "normalized_shape": [16], "input_shape": [16],
            "max_batch_size": 8, "params": {"weight": _tensor(weight), "bias": _tensor(bias)}}
    resp = http.put("/v1/models/runtime_ln", json=body, headers=AUTH)
    assert resp.status_code == 201, resp.text
    assert resp.json()["metadata"]["inputs"][0]["shape"] == [-1, 16]
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    payload, headers = infer_binary_body(x, "FP32")
    y = decode_response(http.post("/v2/models/runtime_ln/infer", content=payload,
                                  headers=headers))
    from normserve.kernels import reference

    assert_close(y, reference.layer_norm(x, [16], weight, bias), np.float32)
    again = http.put("/v1/models/runtime_ln", json={**body, "params": {}}, headers=AUTH)
    assert again.status_code == 200 and again.json()["replaced"] is True
    y2 = decode_response(http.post("/v2/models/runtime_ln/infer", content=payload,
                                   headers=headers))
    assert_close(y2, reference.layer_norm(x, [16]), np.float32)
    assert http.delete("/v1/models/runtime_ln", headers=AUTH).json() == {"deleted": "runtime_ln"}
    assert http.post("/v2/models/runtime_ln/infer", content=payload,
                     headers=headers).status_code == 404
    assert http.delete("/v1/models/runtime_ln", headers=AUTH).status_code == 404


def test_onnx_download(http):
    export = pytest.importorskip("export")
    if not hasattr(export, "to_onnx"):
        pytest.skip("the ONNX exporter has not landed yet")
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    resp = http.get("/v1/models/layer_norm_1024/model.onnx")
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/octet-stream"
    model = onnx.load_from_string(resp.content)
    onnx.checker.check_model(model)
    assert http.get("/v1/models/layer_norm_1024/model.onnx").content == resp.content  # cached
    session = ort.InferenceSession(resp.content, providers=["CPUExecutionProvider"])
    x = sample_input("layer_norm_1024", 2, "FP32", seed=12)
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    assert_matches_reference("layer_norm_1024", x, y, "FP32")
    with_opset = http.get("/v1/models/layer_norm_1024/model.onnx", params={"opset": 18})
    if with_opset.status_code == 200:
        imports = onnx.load_from_string(with_opset.content).opset_import
        assert any(o.domain in ("", "ai.onnx") and o.version == 18 for o in imports)
    else:
        assert with_opset.status_code == 400 and "opset" in with_opset.json()["error"]


def test_registration_is_off_without_a_token(app_factory, model_repository):
    save_model(model_repository / "only", {"kind": "rms_norm", "normalized_shape": [4],
                                   "input_shape": [4]}, {})
    http = app_factory(model_repository=str(model_repository), admin_token=None).http
    resp = http.put("/v1/models/x", json={"kind": "rms_norm"}, headers=AUTH)
    assert resp.status_code == 403 and "disabled" in resp.json()["error"]
    assert http.delete("/v1/models/only", headers=AUTH).status_code == 403


def test_broken_models_are_reported_and_skipped(app_factory, model_repository):
    save_model(model_repository / "good", {"kind": "rms_norm", "normalized_shape": [4],
                                   "input_shape": [4]}, {"weight": np.ones(4, np.float32)})
    save_model(model_repository / "bad name!", {"kind": "rms_norm", "normalized_shape": [4]}, {})
    (model_repository / "bad_json").mkdir()
    (model_repository / "bad_json" / "config.json").write_text("{not json")
    save_model(model_repository / "bad_field", {"kind": "layer_norm", "normalized_shape": [4],
                                        "max_batch_size": -3}, {})
    save_model(model_repository / "bad_params", {"kind": "layer_norm", "normalized_shape": [4]},
               {"weight": np.ones(5, np.float32)})
    (model_repository / "pickled").mkdir()
    (model_repository / "pickled" / "config.json").write_text(json.dumps(
        {"kind": "layer_norm", "normalized_shape": [2]}))
    np.savez(model_repository / "pickled" / "params.npz",
             weight=np.array([{"a": 1}, None], dtype=object))
    http = app_factory(model_repository=str(model_repository)).http
    listed = http.get("/v1/models").json()
    assert [m["name"] for m in listed["models"]] == ["good"]
    errors = {s["name"]: s["error"] for s in listed["skipped"]}
    assert set(errors) == {"bad name!", "bad_json", "bad_field", "bad_params", "pickled"}
    assert "config.json" in errors["bad_json"]
    assert "max_batch_size" in errors["bad_field"]
    assert "weight" in errors["bad_params"]
    assert "params.npz" in errors["pickled"]
    resp = http.get("/v2/models/bad_field")
    assert resp.status_code == 404 and "max_batch_size" in resp.json()["error"]
    assert http.get("/v2/health/ready").status_code == 200
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    resp = http.post("/v2/models/good/infer", json=infer_json_body(x, "FP32"))
    from normserve.kernels import reference

    np.testing.assert_allclose(decode_response(resp), reference.rms_norm(x, [4]),
                               rtol=1e-5, atol=1e-6)
