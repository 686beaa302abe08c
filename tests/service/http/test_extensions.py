"""Triton's protocol extensions over HTTP, through tritonclient.http unmodified (the app served
from a thread of this process: tritonclient needs a socket): model configuration, statistics,
the repository API (admin only), logging; trace settings, not served (501); and /v2 listing
them."""

from __future__ import annotations

import httpx
import pytest
import tritonclient.http as httpclient
from service_helpers import (
    DEMO_MODELS,
    SAMPLE_SHAPES,
    check_triton_config,
    in_thread,
    sample_input,
)
from tritonclient.utils import InferenceServerException

TOKEN = "tok"
ADMIN = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server():
    with in_thread(admin_token=TOKEN) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def test_extensions_listed(server):
    extensions = httpx.get(server.url + "/v2").json()["extensions"]
    assert {"binary_tensor_data", "model_configuration", "statistics", "logging",
            "model_repository"} <= set(extensions)


@pytest.mark.parametrize("name", sorted(SAMPLE_SHAPES))
def test_model_config(client, name):
    check_triton_config(client.get_model_config(name), name)
    check_triton_config(client.get_model_config(name, model_version="1"), name)


def test_statistics(client):
    name = "group_norm_8"
    x = sample_input(name, 5, "FP32", seed=1)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    before = client.get_inference_statistics(name)["model_stats"][0]
    client.infer(name, [inp])
    after = client.get_inference_statistics(name)["model_stats"][0]
    assert after["inference_count"] - before["inference_count"] == 5
    assert after["execution_count"] - before["execution_count"] == 1
    assert after["inference_stats"]["success"]["count"] == \
        before["inference_stats"]["success"]["count"] + 1
    every = client.get_inference_statistics()["model_stats"]
    assert sorted(m["name"] for m in every) == DEMO_MODELS
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_inference_statistics("nope")


def test_repository_api_is_admin_only(client):
    for call in (client.get_model_repository_index,
                 lambda: client.load_model("layer_norm_1024"),
                 lambda: client.unload_model("layer_norm_1024")):
        with pytest.raises(InferenceServerException) as err:
            call()
        assert err.value.status() == "401", err.value
    index = client.get_model_repository_index(headers=ADMIN)
    assert sorted(m["name"] for m in index) == DEMO_MODELS
    assert all(m["state"] == "READY" and m["version"] == "1" for m in index)
    with pytest.raises(InferenceServerException, match="not allowed in model control mode"):
        client.load_model("layer_norm_1024", headers=ADMIN)


def test_repository_index_reports_skipped_folders(app_factory, tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    http = app_factory(model_repository=str(tmp_path), admin_token=TOKEN).http
    index = http.post("/v2/repository/index", headers=ADMIN).json()
    assert index == [{"name": "broken", "version": "1", "state": "UNAVAILABLE",
                      "reason": index[0]["reason"]}]
    assert "config.json" in index[0]["reason"]
    ready = http.post("/v2/repository/index", json={"ready": True}, headers=ADMIN).json()
    assert ready == []
    bad = http.post("/v2/repository/index", json={"ready": "yes"}, headers=ADMIN)
    assert bad.status_code == 400 and bad.json()["error"].startswith("ready:")


def test_log_settings(client, server):
    settings = client.get_log_settings()
    assert settings["log_info"] is True and settings["log_format"] == "default"
    client.update_log_settings({"log_info": False, "log_warning": True})
    assert client.get_log_settings()["log_info"] is False
    client.update_log_settings({"log_info": True})
    for bad, words in (({"log_info": "yes"}, "log_info: must be true or false"),
                       ({"log_file": "/tmp/x"}, "log_file: cannot be changed"),
                       ({"log_verbose_level": -1}, "log_verbose_level: must be an integer")):
        resp = httpx.post(server.url + "/v2/logging", json=bad)
        assert resp.status_code == 400 and resp.json()["error"].startswith(words)
    assert client.get_log_settings()["log_info"] is True


def test_trace_settings_are_not_served(client, server):
    """501 with a message, as gRPC's TraceSetting answers UNIMPLEMENTED (not a 404)."""
    with pytest.raises(InferenceServerException) as err:
        client.get_trace_settings()
    assert err.value.status() == "501"
    assert "trace settings are not supported" in err.value.message()
    for path in ("/v2/trace/setting", "/v2/models/rms_norm_512/trace/setting"):
        resp = httpx.post(server.url + path, json={"trace_level": ["TIMESTAMPS"]})
        assert resp.status_code == 501 and "trace" in resp.json()["error"]
