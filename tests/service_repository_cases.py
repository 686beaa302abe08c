"""What the model control tests share (http/test_model_control.py in this process,
process/test_model_control_replicas.py with two servers): an rms_norm model of N features
written to a folder, its expected output for the input X, and what a server answers for it."""

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
