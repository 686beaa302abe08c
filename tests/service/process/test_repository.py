"""The model repository is the source of truth (SPEC 8): registrations and removals are
durable before they are acknowledged and survive SIGKILL; interrupted writes are finished or
discarded at start; nothing a user put in the repository is erased; a full repository
refuses with 507 and changes nothing; the demo repository cannot be changed."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from service_helpers import (
    DEMO,
    decode_response,
    infer_binary_body,
    running_server,
)

from normserve.kernels import reference
from normserve.repository import (
    REMOVED_DIR,
    load_model,
    recover_repository,
    remove_model,
    save_model,
    write_model,
)

TOKEN = "repo-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _body(weight: np.ndarray) -> dict:
    n = weight.shape[0]
    return {"kind": "rms_norm", "normalized_shape": [n], "input_shape": [n],
            "params": {"weight": {"shape": [n], "datatype": "FP32",
                                  "data": weight.astype(np.float64).tolist()}}}


def _infer(url: str, name: str, x: np.ndarray) -> httpx.Response:
    body, headers = infer_binary_body(x, "FP32")
    return httpx.post(f"{url}/v2/models/{name}/infer", content=body, headers=headers,
                      timeout=30)


def _kill(server) -> None:
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)


X = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)


def _config(n: int) -> dict:
    return {"kind": "rms_norm", "normalized_shape": [n], "input_shape": [n]}


def _served_weight(url: str, name: str) -> np.ndarray | None:
    resp = _infer(url, name, X)
    if resp.status_code == 404:
        return None
    assert resp.status_code == 200, resp.text
    return decode_response(resp)


def test_registrations_survive_sigkill(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    w1, w2 = np.linspace(0.5, 1.5, 8), np.linspace(2.0, 3.0, 8)
    want1 = reference.rms_norm(X, [8], w1)
    want2 = reference.rms_norm(X, [8], w2)
    args = ("--model-repository", str(repo), "--admin-token", TOKEN)
    with running_server(*args) as srv:
        assert httpx.put(f"{srv.url}/v1/models/m", json=_body(w1), headers=AUTH).status_code \
            == 201
        assert httpx.put(f"{srv.url}/v1/models/gone", json=_body(w1),
                         headers=AUTH).status_code == 201
        np.testing.assert_allclose(_served_weight(srv.url, "m"), want1, rtol=1e-5, atol=1e-6)
        _kill(srv)
    with running_server(*args) as srv:  # registered: served after a crash
        np.testing.assert_allclose(_served_weight(srv.url, "m"), want1, rtol=1e-5, atol=1e-6)
        resp = httpx.put(f"{srv.url}/v1/models/m", json=_body(w2), headers=AUTH)
        assert resp.status_code == 200 and resp.json()["replaced"] is True
        assert httpx.delete(f"{srv.url}/v1/models/gone", headers=AUTH).status_code == 200
        _kill(srv)
    with running_server(*args) as srv:  # replaced: new parameters; deleted: gone
        np.testing.assert_allclose(_served_weight(srv.url, "m"), want2, rtol=1e-5, atol=1e-6)
        assert _served_weight(srv.url, "gone") is None
    # Nothing erased: the replaced and the removed folders are in .removed/, whole.
    aside = sorted(p.name.split(".")[0] for p in (repo / REMOVED_DIR).iterdir())
    assert aside == ["gone", "m"]
    for folder in (repo / REMOVED_DIR).iterdir():
        assert load_model(folder)[0].kind == "rms_norm"
    assert sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")) == ["m"]


def test_demo_repository_cannot_be_changed():
    with running_server("--admin-token", TOKEN) as srv:
        resp = httpx.put(f"{srv.url}/v1/models/m", json=_body(np.ones(8)), headers=AUTH)
        assert resp.status_code == 409 and "--model-repository" in resp.json()["error"]
        resp = httpx.delete(f"{srv.url}/v1/models/rms_norm_512", headers=AUTH)
        assert resp.status_code == 409
    assert (DEMO / "rms_norm_512" / "config.json").is_file()


@pytest.fixture
def small_tmpfs(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_repository_refuses_and_changes_nothing(small_tmpfs):
    small = np.linspace(0.5, 1.5, 8)
    save_model(small_tmpfs / "m", _config(8), {"weight": small.astype(np.float32)})
    before = sorted(str(p) for p in small_tmpfs.rglob("*"))
    with running_server("--model-repository", str(small_tmpfs), "--admin-token", TOKEN) as srv:
        big = np.linspace(0.5, 1.5, 40_000)  # 160 kB of parameters for a 48 kB filesystem
        resp = httpx.put(f"{srv.url}/v1/models/m", json=_body(big), headers=AUTH)
        assert resp.status_code == 507, resp.text
        error = resp.json()["error"]
        assert "No space left on device" in error and "nothing was changed" in error
        # The old version is still served, and the repository holds what it held.
        np.testing.assert_allclose(_served_weight(srv.url, "m"),
                                   reference.rms_norm(X, [8], small), rtol=1e-5, atol=1e-6)
    after = sorted(str(p) for p in small_tmpfs.rglob("*") if p.name != ".lock")
    assert after == before


# --- recovery of interrupted writes (the states a crash can leave) --------------------------
def test_recovery_rolls_a_journalled_swap_forward(tmp_path):
    save_model(tmp_path / "m", _config(4), {"weight": np.ones(4, np.float32)})
    staging = tmp_path / ".staging-m.abc"
    save_model(staging, _config(4), {"weight": np.full(4, 2.0, np.float32)})
    (tmp_path / ".swap-m").write_text(staging.name)
    assert recover_repository(tmp_path) == ["m: completed an interrupted replacement"]
    assert load_model(tmp_path / "m")[1].params["weight"][0] == 2.0
    assert not staging.exists() and not (tmp_path / ".swap-m").exists()
    (old,) = (tmp_path / REMOVED_DIR).iterdir()
    assert load_model(old)[1].params["weight"][0] == 1.0


def test_recovery_after_the_old_folder_moved_aside(tmp_path):
    staging = tmp_path / ".staging-m.abc"  # crash between the two renames
    save_model(staging, _config(4), {"weight": np.full(4, 2.0, np.float32)})
    (tmp_path / ".swap-m").write_text(staging.name)
    recover_repository(tmp_path)
    assert load_model(tmp_path / "m")[1].params["weight"][0] == 2.0


def test_recovery_discards_unjournalled_writes(tmp_path):
    save_model(tmp_path / "m", _config(4), {"weight": np.ones(4, np.float32)})
    partial = tmp_path / ".staging-m.abc"
    partial.mkdir()
    (partial / "config.json").write_text('{"kind": "rms_n')  # cut short
    (tmp_path / ".swap-x").write_text(".staging-x.gone")  # a finished swap's stale entry
    done = recover_repository(tmp_path)
    assert not partial.exists() and not (tmp_path / ".swap-x").exists()
    assert len(done) == 2
    assert load_model(tmp_path / "m")[1].params["weight"][0] == 1.0


def test_write_and_remove_keep_the_users_folders(tmp_path):
    save_model(tmp_path / "mine", _config(4), {"weight": np.ones(4, np.float32)})
    (tmp_path / "mine" / "NOTES.txt").write_text("my own notes")
    write_model(tmp_path, "mine", _config(4), {"weight": np.full(4, 3.0, np.float32)})
    (old,) = (tmp_path / REMOVED_DIR).iterdir()
    assert (old / "NOTES.txt").read_text() == "my own notes"
    aside = remove_model(tmp_path, "mine")
    assert aside.parent.name == REMOVED_DIR and json.loads(
        (aside / "config.json").read_text())["kind"] == "rms_norm"
    assert not (tmp_path / "mine").exists()
    assert sorted(p.name for p in Path(tmp_path).iterdir() if not p.name.startswith(".")) == []
    shutil.rmtree(tmp_path / REMOVED_DIR)


def _put(url: str, name: str, weight: np.ndarray) -> httpx.Response:
    return httpx.put(f"{url}/v1/models/{name}", json=_body(weight), headers=AUTH, timeout=120)


def test_sigkill_during_registration_leaves_old_or_new(tmp_path):
    """Six rounds of SIGKILL at a random moment of a replacement: after each restart the
    model is the old or the new one, whole, and no folder is reported broken."""
    import random
    import threading

    repo = tmp_path / "models"
    repo.mkdir()
    n = 400_000  # ~1.6 MB of parameters: the write takes a while
    old_w, new_w = np.full(n, 1.0), np.full(n, 2.0)
    x = np.random.default_rng(2).standard_normal((1, n)).astype(np.float32)
    answers = {s: reference.rms_norm(x, [n], np.full(n, s)) for s in (1.0, 2.0)}
    args = ("--model-repository", str(repo), "--admin-token", TOKEN)
    rng = random.Random(7)
    with running_server(*args) as srv:
        assert _put(srv.url, "m", old_w).status_code == 201
    for _ in range(6):
        with running_server(*args) as srv:
            def replace(url: str = srv.url) -> None:
                with contextlib.suppress(httpx.HTTPError):  # killed mid-request: expected
                    _put(url, "m", new_w)

            put = threading.Thread(target=replace, daemon=True)
            put.start()
            time.sleep(rng.uniform(0.0, 1.5))
            _kill(srv)
        with running_server(*args) as srv:
            resp = _infer(srv.url, "m", x)
            assert resp.status_code == 200, resp.text
            y = decode_response(resp)
            assert any(np.allclose(y, a, rtol=1e-5, atol=1e-6) for a in answers.values())
            index = httpx.post(f"{srv.url}/v2/repository/index", headers=AUTH).json()
            assert [m["state"] for m in index] == ["READY"], index
            _put(srv.url, "m", old_w)  # back to the old version for the next round
        assert sorted(p.name for p in repo.iterdir() if not p.name.startswith(".")) == ["m"]


def test_concurrent_registrations_of_one_name(tmp_path):
    """Eight PUTs of one name at once: each gets its own answer, and the model served and
    the folder on disk are one of them, whole."""
    from concurrent.futures import ThreadPoolExecutor

    with running_server("--model-repository", str(tmp_path), "--admin-token", TOKEN) as srv:
        weights = [np.full(8, float(k + 1)) for k in range(8)]
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda w: _put(srv.url, "m", w).status_code, weights))
        assert sorted(codes) == [200] * 7 + [201]
        served = _served_weight(srv.url, "m")
        matches = [k for k, w in enumerate(weights)
                   if np.allclose(served, reference.rms_norm(X, [8], w), rtol=1e-5, atol=1e-6)]
        assert len(matches) == 1
        on_disk = load_model(tmp_path / "m")[1].params["weight"]
        np.testing.assert_array_equal(on_disk, weights[matches[0]])
