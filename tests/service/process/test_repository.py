"""The model repository is the source of truth (SPEC 8), across crashes of a real server
process: registrations and removals are durable before they are acknowledged and survive
SIGKILL, and a SIGKILL at any moment of a replacement leaves the old or the new model, whole
(the rest of the repository's behaviour: http/test_repository.py and core/)."""

from __future__ import annotations

import contextlib
import random
import signal
import threading
import time

import httpx
import numpy as np
from service_helpers import Server, decode_response, running_server
from service_repository_cases import (
    REPO_AUTH,
    REPO_TOKEN,
    REPO_X,
    infer_rows,
    put_rms,
    served_rows,
)

from normserve.kernels import reference
from normserve.repository import REMOVED_DIR, load_model


def _kill(server: Server) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    server.stop()  # closes its log and client


def test_registrations_survive_sigkill(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    w1, w2 = np.linspace(0.5, 1.5, 8), np.linspace(2.0, 3.0, 8)
    want1 = reference.rms_norm(REPO_X, [8], w1)
    want2 = reference.rms_norm(REPO_X, [8], w2)
    args = ("--model-repository", str(repo), "--admin-token", REPO_TOKEN)
    with running_server(*args) as srv:
        assert put_rms(srv.http, "m", w1).status_code == 201
        assert put_rms(srv.http, "gone", w1).status_code == 201
        np.testing.assert_allclose(served_rows(srv.http, "m"), want1, rtol=1e-5, atol=1e-6)
        _kill(srv)
    with running_server(*args) as srv:  # registered: served after a crash
        np.testing.assert_allclose(served_rows(srv.http, "m"), want1, rtol=1e-5, atol=1e-6)
        resp = put_rms(srv.http, "m", w2)
        assert resp.status_code == 200 and resp.json()["replaced"] is True
        assert srv.http.delete("/v1/models/gone", headers=REPO_AUTH).status_code == 200
        _kill(srv)
    with running_server(*args) as srv:  # replaced: new parameters; deleted: gone
        np.testing.assert_allclose(served_rows(srv.http, "m"), want2, rtol=1e-5, atol=1e-6)
        assert served_rows(srv.http, "gone") is None
    # Nothing erased: the replaced and the removed folders are in .removed/, whole.
    aside = sorted(p.name.split(".")[0] for p in (repo / REMOVED_DIR).iterdir())
    assert aside == ["gone", "m"]
    for folder in (repo / REMOVED_DIR).iterdir():
        assert load_model(folder)[0].kind == "rms_norm"
    assert sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")) == ["m"]


def test_sigkill_during_registration_leaves_old_or_new(tmp_path):
    """Six rounds of SIGKILL at a random moment of a replacement: after each restart the
    model is the old or the new one, whole, and no folder is reported broken. Each restarted
    server, once checked and put back to the old version, is the next round's victim (seven
    processes for six crashes)."""
    repo = tmp_path / "models"
    repo.mkdir()
    n = 400_000  # ~1.6 MB of parameters: the write takes a while
    old_w, new_w = np.full(n, 1.0), np.full(n, 2.0)
    x = np.random.default_rng(2).standard_normal((1, n)).astype(np.float32)
    answers = {s: reference.rms_norm(x, [n], np.full(n, s)) for s in (1.0, 2.0)}
    args = ("--model-repository", str(repo), "--admin-token", REPO_TOKEN)
    rng = random.Random(7)
    srv = Server(*args).wait_ready()
    try:
        assert put_rms(srv.http, "m", old_w).status_code == 201
        for _ in range(6):
            def replace(http: httpx.Client = srv.http) -> None:
                with contextlib.suppress(httpx.HTTPError):  # killed mid-request: expected
                    put_rms(http, "m", new_w)

            put = threading.Thread(target=replace, daemon=True)
            put.start()
            time.sleep(rng.uniform(0.0, 1.5))
            _kill(srv)
            srv = Server(*args).wait_ready()
            resp = infer_rows(srv.http, "m", x)
            assert resp.status_code == 200, resp.text
            y = decode_response(resp)
            assert any(np.allclose(y, a, rtol=1e-5, atol=1e-6) for a in answers.values())
            index = srv.http.post("/v2/repository/index", headers=REPO_AUTH).json()
            assert [m["state"] for m in index] == ["READY"], index
            put_rms(srv.http, "m", old_w)  # back to the old version for the next round
            assert sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")) == ["m"]
    finally:
        if srv.proc.poll() is None:
            srv.stop()
