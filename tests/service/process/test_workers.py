"""Several workers act as one server: a real ``normserve serve --workers 2`` (uvicorn forks
the workers; they agree through the runtime folder)."""

from __future__ import annotations

import shutil

import httpx
import numpy as np
from service_helpers import (
    assert_matches_reference,
    decode_response,
    infer_binary_body,
    running_server,
    sample_input,
)

from normserve.kernels.oracle import assert_close

TOKEN = "admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _tensor(a: np.ndarray, datatype: str = "FP32") -> dict:
    return {"shape": list(a.shape), "datatype": datatype,
            "data": a.astype(np.float64).ravel().tolist()}


def test_two_workers_act_as_one_server(demo_repository, tmp_path):
    """--workers 2: a registration reaches both workers before it is acknowledged (40 fresh
    connections, spread over the workers by the kernel, all get the new model), a removal
    too, and every /metrics scrape reads the exact total of successful requests."""
    shutil.copytree(demo_repository, tmp_path / "models")
    with running_server("--workers", "2", "--admin-token", TOKEN, "--model-repository",
                        str(tmp_path / "models")) as srv:
        successes = 0
        for seed in range(8):
            x = sample_input("spectral_norm_64x32", 2, "FP32", seed)
            body, headers = infer_binary_body(x, "FP32")
            with httpx.Client(base_url=srv.url, timeout=60) as http:  # fresh connections
                resp = http.post("/v2/models/spectral_norm_64x32/infer", content=body,
                                 headers=headers)
            assert_matches_reference("spectral_norm_64x32", x, decode_response(resp), "FP32")
            successes += 1
        weight = np.linspace(0.5, 1.5, 16)
        reg = {"kind": "rms_norm", "normalized_shape": [16], "input_shape": [16],
               "params": {"weight": _tensor(weight)}}
        resp = httpx.put(f"{srv.url}/v1/models/added", json=reg, headers=AUTH, timeout=60)
        assert resp.status_code == 201, resp.text
        assert resp.json()["workers"] == {"serving": 2, "of": 2}
        x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
        body, headers = infer_binary_body(x, "FP32")
        from normserve.kernels import reference

        for _ in range(40):
            with httpx.Client(base_url=srv.url, timeout=60) as http:
                resp = http.post("/v2/models/added/infer", content=body, headers=headers)
            assert resp.status_code == 200, resp.text
            assert_close(decode_response(resp), reference.rms_norm(x, [16], weight),
                         np.float32)
            successes += 1
        for _ in range(5):
            with httpx.Client(base_url=srv.url, timeout=60) as http:
                text = http.get("/metrics").text
            total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("nv_inference_request_success_total{"))
            assert total == successes, text[:2000]
            with httpx.Client(base_url=srv.url, timeout=60) as http:
                stats = http.get("/v2/models/added/stats").json()["model_stats"][0]
            assert stats["inference_count"] == 40 * 2  # rows, counted by both workers
            assert stats["inference_stats"]["success"]["count"] == 40
        assert httpx.delete(f"{srv.url}/v1/models/added", headers=AUTH).status_code == 200
        for _ in range(20):
            with httpx.Client(base_url=srv.url, timeout=60) as http:
                assert http.post("/v2/models/added/infer", content=body,
                                 headers=headers).status_code == 404
