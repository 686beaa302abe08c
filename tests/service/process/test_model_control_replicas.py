"""Model control with two server processes (as two pods on one ReadWriteMany volume): each
follows what the other writes, by polling the shared repository."""

from __future__ import annotations

import httpx
from service_helpers import running_server
from service_repository_cases import ADMIN, TOKEN, N, close, eventually, expected, rms, served


def test_replicas_on_one_repository_converge(tmp_path):
    """Two servers (as two pods on one ReadWriteMany volume) in poll mode: a registration
    through one is served by the other within the poll interval; a removal likewise."""
    common = ("--model-repository", str(tmp_path), "--admin-token", TOKEN,
              "--model-control-mode", "poll", "--repository-poll-secs", "0.3")
    rms(tmp_path / "a", 1.0)
    with running_server(*common) as one, running_server(*common) as two, \
            httpx.Client(base_url=one.url, timeout=30) as h1, \
            httpx.Client(base_url=two.url, timeout=30) as h2:
        resp = httpx.put(f"{one.url}/v1/models/b", headers=ADMIN, timeout=60, json={
            "kind": "rms_norm", "normalized_shape": [N], "input_shape": [N],
            "params": {"weight": {"shape": [N], "datatype": "FP32", "data": [6.0] * N}}})
        assert resp.status_code == 201, resp.text
        eventually(lambda: close(served(h2, "b"), expected(6.0)))
        assert httpx.delete(f"{two.url}/v1/models/a", headers=ADMIN).status_code == 200
        eventually(lambda: served(h1, "a") is None)
        assert close(served(h1, "b"), expected(6.0))
