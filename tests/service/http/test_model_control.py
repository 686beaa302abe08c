"""Model control as Triton names it (SPEC 8), the app in this process: explicit mode with
``--load-model`` and the repository API (tritonclient http and grpc, admin token), a load
with a configuration override, poll mode following a repository edited by hand, and reloads
under load that fail no request (two replicas on one repository: tests/service/process)."""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from service_helpers import clients_running, decode_response, in_thread, infer_binary_body
from service_repository_cases import ADMIN, TOKEN, N, X, close, eventually, expected, rms, served
from tritonclient.utils import InferenceServerException

from normserve.kernels import reference
from normserve.repository import REMOVED_DIR


def test_explicit_mode_loads_what_it_is_told(tmp_path):
    for name, scale in (("a", 1.0), ("b", 2.0)):
        rms(tmp_path / name, scale)
    with in_thread(grpc=True, model_repository=str(tmp_path), admin_token=TOKEN,
                   model_control_mode="explicit", load_models=("a",)) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as h:
        http = httpclient.InferenceServerClient(srv.url.removeprefix("http://"))
        grpc = grpcclient.InferenceServerClient(srv.grpc_url)
        assert close(served(h, "a"), expected(1.0))
        assert served(h, "b") is None
        index = {m["name"]: m for m in http.get_model_repository_index(headers=ADMIN)}
        assert index["a"]["state"] == "READY"
        assert index["b"]["state"] == "UNAVAILABLE" and index["b"]["reason"] == "unloaded"
        with pytest.raises(InferenceServerException) as err:
            http.load_model("b")  # admin only
        assert err.value.status() == "401"
        http.load_model("b", headers=ADMIN)
        assert close(served(h, "b"), expected(2.0))
        grpc.unload_model("a", headers=ADMIN)
        assert served(h, "a") is None
        assert (tmp_path / "a" / "config.json").is_file()  # unloading keeps the folder
        grpc.load_model("a", headers=ADMIN)
        assert close(served(h, "a"), expected(1.0))
        with pytest.raises(InferenceServerException) as err:
            grpc.load_model("nope", headers=ADMIN)
        assert err.value.status() == "StatusCode.NOT_FOUND"
        # A configuration override replaces config.json, durably, and keeps the old one.
        override = {"kind": "rms_norm", "normalized_shape": [N], "input_shape": [N],
                    "eps": 0.5}
        http.load_model("b", headers=ADMIN, config=json.dumps(override))
        assert close(served(h, "b"), expected(2.0, 0.5))
        assert json.loads((tmp_path / "b" / "config.json").read_text())["eps"] == 0.5
        assert len(list((tmp_path / REMOVED_DIR).iterdir())) == 1
        with pytest.raises(InferenceServerException) as err:  # invalid: nothing changes
            http.load_model("b", headers=ADMIN, config=json.dumps({"kind": "dropout"}))
        assert err.value.status() == "400" and "kind" in err.value.message()
        assert json.loads((tmp_path / "b" / "config.json").read_text())["eps"] == 0.5
        http.close()
        grpc.close()


def test_load_is_refused_outside_explicit_mode(app_factory, tmp_path):
    rms(tmp_path / "a", 1.0)
    http = app_factory(model_repository=str(tmp_path), admin_token=TOKEN,
                       model_control_mode="poll").http
    resp = http.post("/v2/repository/models/a/load", headers=ADMIN)
    assert resp.status_code == 400 and "'poll'" in resp.json()["error"]


def test_poll_mode_follows_the_repository(app_factory, tmp_path):
    rms(tmp_path / "a", 1.0)
    http = app_factory(model_repository=str(tmp_path), model_control_mode="poll",
                       repository_poll_secs=0.3).http
    assert close(served(http, "a"), expected(1.0))
    # Added by hand: written elsewhere, then moved in whole.
    rms(tmp_path / ".incoming", 3.0)
    os.rename(tmp_path / ".incoming", tmp_path / "b")
    eventually(lambda: close(served(http, "b"), expected(3.0)))
    # Edited in place: new parameters are picked up.
    rms(tmp_path / "a", 4.0)
    eventually(lambda: close(served(http, "a"), expected(4.0)))
    # Half-written by hand: reported, not served, then served once complete.
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text('{"kind": "rms_no')
    time.sleep(1.0)
    assert served(http, "c") is None
    rms(tmp_path / "c", 5.0)
    eventually(lambda: close(served(http, "c"), expected(5.0)))
    # Removed: unloaded.
    for f in (tmp_path / "b").iterdir():
        f.unlink()
    (tmp_path / "b").rmdir()
    eventually(lambda: served(http, "b") is None)
    assert close(served(http, "a"), expected(4.0))


def test_reloads_under_load_fail_no_request(app_factory, tmp_path):
    """32 clients with unique inputs during 20 replacements of their model: no errors, and
    every answer is the old or the new parameters' result for that very input."""
    rms(tmp_path / "m", 1.0)
    scales = (1.0, 2.0)
    http = app_factory(model_repository=str(tmp_path), admin_token=TOKEN).http
    stop = threading.Event()
    failures: list[str] = []
    answered = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        rng = np.random.default_rng(1000 + k)
        while not stop.is_set():
            x = rng.standard_normal((1 + k % 3, N)).astype(np.float32)
            body, headers = infer_binary_body(x, "FP32")
            resp = http.post("/v2/models/m/infer", content=body, headers=headers)
            with lock:
                if resp.status_code != 200:
                    failures.append(f"{resp.status_code} {resp.text[:200]}")
                    continue
                y = decode_response(resp)
                if not any(np.allclose(y, reference.rms_norm(x, [N], np.full(N, s)),
                                       rtol=1e-5, atol=1e-6) for s in scales):
                    failures.append("an answer matches neither version")
                answered[0] += 1

    with clients_running(client, 32, stop):
        for i in range(20):
            scale = scales[(i + 1) % 2]
            resp = http.put("/v1/models/m", headers=ADMIN, json={
                "kind": "rms_norm", "normalized_shape": [N], "input_shape": [N],
                "params": {"weight": {"shape": [N], "datatype": "FP32",
                                      "data": [scale] * N}}})
            assert resp.status_code == 200, resp.text
            time.sleep(0.05)
    assert not failures, failures[:5]
    assert answered[0] > 100


def test_delete_and_hand_edits_racing_inference(app_factory, tmp_path):
    """Poll mode under load: a folder added by hand is picked up while 16 clients hammer
    another model; then the loaded model is deleted under them: every answer is right, or a
    clear 404/503 JSON error once it is gone, never a 500, and the server stays up."""
    rms(tmp_path / "a", 1.0)
    http = app_factory(model_repository=str(tmp_path), admin_token=TOKEN,
                       model_control_mode="poll", repository_poll_secs=0.3).http
    stop = threading.Event()
    bad: list[str] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()

    def client(_: int) -> None:
        body, headers = infer_binary_body(X, "FP32")
        while not stop.is_set():
            resp = http.post("/v2/models/a/infer", content=body, headers=headers)
            with lock:
                codes[resp.status_code] = codes.get(resp.status_code, 0) + 1
                if resp.status_code == 200:
                    if not close(decode_response(resp), expected(1.0)):
                        bad.append("wrong answer")
                elif resp.status_code not in (404, 503) or "error" not in resp.json():
                    bad.append(f"{resp.status_code} {resp.text[:200]}")

    with clients_running(client, 16, stop):
        rms(tmp_path / ".incoming", 3.0)
        os.rename(tmp_path / ".incoming", tmp_path / "b")
        eventually(lambda: close(served(http, "b"), expected(3.0)))
        time.sleep(0.5)
        assert http.delete("/v1/models/a", headers=ADMIN).status_code == 200
        time.sleep(0.5)
    assert not bad, bad[:5]
    assert codes.get(200, 0) > 50 and codes.get(404, 0) > 0, codes
    assert close(served(http, "b"), expected(3.0))
