"""What the repository and model control tests share (in this process: http/, with real
processes: process/): an rms_norm model of N features written to a folder or sent in a PUT,
its expected output for the input X, and what a server answers for it."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
from service_helpers import decode_response, infer_binary_body

from normserve.kernels import reference
from normserve.repository import save_model

TOKEN = "ctl-token"
ADMIN = {"authorization": f"Bearer {TOKEN}"}
N = 8
X = np.random.default_rng(1).standard_normal((3, N)).astype(np.float32)


def rms(folder: Path, scale: float, eps: float | None = None) -> None:
    config = {"kind": "rms_norm", "normalized_shape": [N], "input_shape": [N]}
    if eps is not None:
        config["eps"] = eps
    save_model(folder, config, {"weight": np.full(N, scale, np.float32)})


def expected(scale: float, eps: float | None = None) -> np.ndarray:
    return reference.rms_norm(X, [N], np.full(N, scale), eps)


def served(http: httpx.Client, name: str) -> np.ndarray | None:
    body, headers = infer_binary_body(X, "FP32")
    resp = http.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    return decode_response(resp)


def close(a: np.ndarray | None, b: np.ndarray) -> bool:
    return a is not None and np.allclose(a, b, rtol=1e-5, atol=1e-6)


def eventually(check, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("the server did not converge in time")


# --- registrations through the API (http/test_repository.py, process/test_repository.py) ---
REPO_TOKEN = "repo-token"
REPO_AUTH = {"Authorization": f"Bearer {REPO_TOKEN}"}
REPO_X = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)


def rms_config(n: int) -> dict:
    return {"kind": "rms_norm", "normalized_shape": [n], "input_shape": [n]}


def rms_body(weight: np.ndarray) -> dict:
    """A registration (PUT /v1/models/{name}) of an rms_norm with this weight."""
    n = weight.shape[0]
    return {**rms_config(n), "params": {"weight": {
        "shape": [n], "datatype": "FP32", "data": weight.astype(np.float64).tolist()}}}


def infer_rows(http: httpx.Client, name: str, x: np.ndarray) -> httpx.Response:
    body, headers = infer_binary_body(x, "FP32")
    return http.post(f"/v2/models/{name}/infer", content=body, headers=headers)


def served_rows(http: httpx.Client, name: str) -> np.ndarray | None:
    """The model's output for REPO_X, None when it is not served."""
    resp = infer_rows(http, name, REPO_X)
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    return decode_response(resp)


def put_rms(http: httpx.Client, name: str, weight: np.ndarray) -> httpx.Response:
    return http.put(f"/v1/models/{name}", json=rms_body(weight), headers=REPO_AUTH)
