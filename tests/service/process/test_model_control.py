"""Model control as Triton names it (SPEC 8), on real servers: explicit mode with
``--load-model`` and the repository API (tritonclient http and grpc, admin token), a load
with a configuration override, poll mode following a repository edited by hand, and reloads
under load that fail no request."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from service_helpers import decode_response, infer_binary_body, running_server
from tritonclient.utils import InferenceServerException

from normserve.kernels import reference
from normserve.repository import REMOVED_DIR, save_model

TOKEN = "ctl-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
N = 8
X = np.random.default_rng(1).standard_normal((3, N)).astype(np.float32)


def _rms(folder: Path, scale: float, eps: float | None = None) -> None:
    config = {"kind": "rms_norm", "normalized_shape": [N], "input_shape": [N]}
    if eps is not None:
        config["eps"] = eps
    save_model(folder, config, {"weight": np.full(N, scale, np.float32)})


def _expected(scale: float, eps: float | None = None) -> np.ndarray:
    return reference.rms_norm(X, [N], np.full(N, scale), eps)


def _served(url: str, name: str) -> np.ndarray | None:
    body, headers = infer_binary_body(X, "FP32")
    resp = httpx.post(f"{url}/v2/models/{name}/infer", content=body, headers=headers,
                      timeout=30)
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    return decode_response(resp)


def _close(a: np.ndarray | None, b: np.ndarray) -> bool:
    return a is not None and np.allclose(a, b, rtol=1e-5, atol=1e-6)


def _eventually(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("the server did not converge in time")


def test_explicit_mode_loads_what_it_is_told(tmp_path):
    for name, scale in (("a", 1.0), ("b", 2.0)):
        _rms(tmp_path / name, scale)
    with running_server("--model-repository", str(tmp_path), "--admin-token", TOKEN,
                        "--model-control-mode", "explicit", "--load-model", "a") as srv:
        http = httpclient.InferenceServerClient(srv.url.removeprefix("http://"))
        grpc = grpcclient.InferenceServerClient(srv.grpc_url)
        assert _close(_served(srv.url, "a"), _expected(1.0))
        assert _served(srv.url, "b") is None
        index = {m["name"]: m for m in http.get_model_repository_index(headers=ADMIN)}
        assert index["a"]["state"] == "READY"
        assert index["b"]["state"] == "UNAVAILABLE" and index["b"]["reason"] == "unloaded"
        with pytest.raises(InferenceServerException) as err:
            http.load_model("b")  # admin only
        assert err.value.status() == "401"
        http.load_model("b", headers=ADMIN)
        assert _close(_served(srv.url, "b"), _expected(2.0))
        grpc.unload_model("a", headers=ADMIN)
        assert _served(srv.url, "a") is None
        assert (tmp_path / "a" / "config.json").is_file()  # unloading keeps the folder
        grpc.load_model("a", headers=ADMIN)
        assert _close(_served(srv.url, "a"), _expected(1.0))
        with pytest.raises(InferenceServerException) as err:
            grpc.load_model("nope", headers=ADMIN)
        assert err.value.status() == "StatusCode.NOT_FOUND"
        # A configuration override replaces config.json, durably, and keeps the old one.
        override = {"kind": "rms_norm", "normalized_shape": [N], "input_shape": [N],
                    "eps": 0.5}
        http.load_model("b", headers=ADMIN, config=json.dumps(override))
        assert _close(_served(srv.url, "b"), _expected(2.0, 0.5))
        assert json.loads((tmp_path / "b" / "config.json").read_text())["eps"] == 0.5
        assert len(list((tmp_path / REMOVED_DIR).iterdir())) == 1
        with pytest.raises(InferenceServerException) as err:  # invalid: nothing changes
            http.load_model("b", headers=ADMIN, config=json.dumps({"kind": "dropout"}))
        assert err.value.status() == "400" and "kind" in err.value.message()
        assert json.loads((tmp_path / "b" / "config.json").read_text())["eps"] == 0.5
        http.close()
        grpc.close()


def test_load_is_refused_outside_explicit_mode(tmp_path):
    _rms(tmp_path / "a", 1.0)
    with running_server("--model-repository", str(tmp_path), "--admin-token", TOKEN,
                        "--model-control-mode", "poll") as srv:
        resp = httpx.post(f"{srv.url}/v2/repository/models/a/load", headers=ADMIN)
        assert resp.status_code == 400 and "'poll'" in resp.json()["error"]


def test_poll_mode_follows_the_repository(tmp_path):
    _rms(tmp_path / "a", 1.0)
    with running_server("--model-repository", str(tmp_path), "--model-control-mode", "poll",
                        "--repository-poll-secs", "0.3") as srv:
        assert _close(_served(srv.url, "a"), _expected(1.0))
        # Added by hand: written elsewhere, then moved in whole.
        _rms(tmp_path / ".incoming", 3.0)
        os.rename(tmp_path / ".incoming", tmp_path / "b")
        _eventually(lambda: _close(_served(srv.url, "b"), _expected(3.0)))
        # Edited in place: new parameters are picked up.
        _rms(tmp_path / "a", 4.0)
        _eventually(lambda: _close(_served(srv.url, "a"), _expected(4.0)))
        # Half-written by hand: reported, not served, then served once complete.
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "config.json").write_text('{"kind": "rms_no')
        time.sleep(1.0)
        assert _served(srv.url, "c") is None
        _rms(tmp_path / "c", 5.0)
        _eventually(lambda: _close(_served(srv.url, "c"), _expected(5.0)))
        # Removed: unloaded.
        for f in (tmp_path / "b").iterdir():
            f.unlink()
        (tmp_path / "b").rmdir()
        _eventually(lambda: _served(srv.url, "b") is None)
        assert _close(_served(srv.url, "a"), _expected(4.0))


def test_reloads_under_load_fail_no_request(tmp_path):
    """32 clients with unique inputs during 20 replacements of their model: no errors, and
    every answer is the old or the new parameters' result for that very input."""
    _rms(tmp_path / "m", 1.0)
    scales = (1.0, 2.0)
    with running_server("--model-repository", str(tmp_path), "--admin-token", TOKEN) as srv:
        stop = threading.Event()
        failures: list[str] = []
        answered = [0]
        lock = threading.Lock()

        def client(k: int) -> None:
            rng = np.random.default_rng(1000 + k)
            with httpx.Client(base_url=srv.url, timeout=60) as h:
                while not stop.is_set():
                    x = rng.standard_normal((1 + k % 3, N)).astype(np.float32)
                    body, headers = infer_binary_body(x, "FP32")
                    resp = h.post("/v2/models/m/infer", content=body, headers=headers)
                    with lock:
                        if resp.status_code != 200:
                            failures.append(f"{resp.status_code} {resp.text[:200]}")
                            continue
                        y = decode_response(resp)
                        if not any(np.allclose(y, reference.rms_norm(x, [N], np.full(N, s)),
                                               rtol=1e-5, atol=1e-6) for s in scales):
                            failures.append("an answer matches neither version")
                        answered[0] += 1

        threads = [threading.Thread(target=client, args=(k,)) for k in range(32)]
        for t in threads:
            t.start()
        try:
            for i in range(20):
                scale = scales[(i + 1) % 2]
                resp = httpx.put(f"{srv.url}/v1/models/m", headers=ADMIN, timeout=60, json={
                    "kind": "rms_norm", "normalized_shape": [N], "input_shape": [N],
                    "params": {"weight": {"shape": [N], "datatype": "FP32",
                                          "data": [scale] * N}}})
                assert resp.status_code == 200, resp.text
                time.sleep(0.05)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not failures, failures[:5]
        assert answered[0] > 100


def test_replicas_on_one_repository_converge(tmp_path):
    """Two servers (as two pods on one ReadWriteMany volume) in poll mode: a registration
    through one is served by the other within the poll interval; a removal likewise."""
    common = ("--model-repository", str(tmp_path), "--admin-token", TOKEN,
              "--model-control-mode", "poll", "--repository-poll-secs", "0.3")
    _rms(tmp_path / "a", 1.0)
    with running_server(*common) as one, running_server(*common) as two:
        resp = httpx.put(f"{one.url}/v1/models/b", headers=ADMIN, timeout=60, json={
            "kind": "rms_norm", "normalized_shape": [N], "input_shape": [N],
            "params": {"weight": {"shape": [N], "datatype": "FP32", "data": [6.0] * N}}})
        assert resp.status_code == 201, resp.text
        _eventually(lambda: _close(_served(two.url, "b"), _expected(6.0)))
        assert httpx.delete(f"{two.url}/v1/models/a", headers=ADMIN).status_code == 200
        _eventually(lambda: _served(one.url, "a") is None)
        assert _close(_served(one.url, "b"), _expected(6.0))


def test_delete_and_hand_edits_racing_inference(tmp_path):
    """Poll mode under load: a folder added by hand is picked up while 16 clients hammer
    another model; then the loaded model is deleted under them: every answer is right, or a
    clear 404/503 JSON error once it is gone, never a 500, and the server stays up."""
    _rms(tmp_path / "a", 1.0)
    with running_server("--model-repository", str(tmp_path), "--admin-token", TOKEN,
                        "--model-control-mode", "poll", "--repository-poll-secs", "0.3") as srv:
        stop = threading.Event()
        bad: list[str] = []
        codes: dict[int, int] = {}
        lock = threading.Lock()

        def client() -> None:
            body, headers = infer_binary_body(X, "FP32")
            with httpx.Client(base_url=srv.url, timeout=60) as h:
                while not stop.is_set():
                    resp = h.post("/v2/models/a/infer", content=body, headers=headers)
                    with lock:
                        codes[resp.status_code] = codes.get(resp.status_code, 0) + 1
                        if resp.status_code == 200:
                            if not _close(decode_response(resp), _expected(1.0)):
                                bad.append("wrong answer")
                        elif resp.status_code not in (404, 503) or "error" not in resp.json():
                            bad.append(f"{resp.status_code} {resp.text[:200]}")

        threads = [threading.Thread(target=client) for _ in range(16)]
        for t in threads:
            t.start()
        try:
            _rms(tmp_path / ".incoming", 3.0)
            os.rename(tmp_path / ".incoming", tmp_path / "b")
            _eventually(lambda: _close(_served(srv.url, "b"), _expected(3.0)))
            time.sleep(0.5)
            assert httpx.delete(f"{srv.url}/v1/models/a", headers=ADMIN,
                                timeout=60).status_code == 200
            time.sleep(0.5)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not bad, bad[:5]
        assert codes.get(200, 0) > 50 and codes.get(404, 0) > 0, codes
        assert _close(_served(srv.url, "b"), _expected(3.0))
