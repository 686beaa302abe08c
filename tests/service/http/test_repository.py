"""Registrations through the API, the app in this process (SPEC 8): a full repository refuses
with 507 and changes nothing, the demo repository cannot be changed, and concurrent
registrations of one name each get their own answer (SIGKILL durability:
process/test_repository.py)."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from service_helpers import in_process
from service_repository_cases import (
    REPO_AUTH,
    REPO_TOKEN,
    REPO_X,
    put_rms,
    rms_config,
    served_rows,
)

from normserve.kernels import reference
from normserve.repository import load_model, save_model


def test_demo_repository_cannot_be_changed(app_factory, demo_repository):
    http = app_factory(admin_token=REPO_TOKEN).http
    resp = put_rms(http, "m", np.ones(8))
    assert resp.status_code == 409 and "--model-repository" in resp.json()["error"]
    resp = http.delete("/v1/models/rms_norm_512", headers=REPO_AUTH)
    assert resp.status_code == 409
    assert (demo_repository / "rms_norm_512" / "config.json").is_file()


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
    save_model(small_tmpfs / "m", rms_config(8), {"weight": small.astype(np.float32)})
    before = sorted(str(p) for p in small_tmpfs.rglob("*"))
    with in_process(model_repository=str(small_tmpfs), admin_token=REPO_TOKEN) as app:
        big = np.linspace(0.5, 1.5, 40_000)  # 160 kB of parameters for a 48 kB filesystem
        resp = put_rms(app.http, "m", big)
        assert resp.status_code == 507, resp.text
        error = resp.json()["error"]
        assert "No space left on device" in error and "nothing was changed" in error
        # The old version is still served, and the repository holds what it held.
        np.testing.assert_allclose(served_rows(app.http, "m"),
                                   reference.rms_norm(REPO_X, [8], small), rtol=1e-5, atol=1e-6)
    after = sorted(str(p) for p in small_tmpfs.rglob("*") if p.name != ".lock")
    assert after == before


def test_concurrent_registrations_of_one_name(app_factory, model_repository):
    """Eight PUTs of one name at once: each gets its own answer, and the model served and
    the folder on disk are one of them, whole."""
    http = app_factory(model_repository=str(model_repository), admin_token=REPO_TOKEN).http
    weights = [np.full(8, float(k + 1)) for k in range(8)]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda w: put_rms(http, "m", w).status_code, weights))
    assert sorted(codes) == [200] * 7 + [201]
    served = served_rows(http, "m")
    matches = [k for k, w in enumerate(weights)
               if np.allclose(served, reference.rms_norm(REPO_X, [8], w), rtol=1e-5, atol=1e-6)]
    assert len(matches) == 1
    on_disk = load_model(model_repository / "m")[1].params["weight"]
    np.testing.assert_array_equal(on_disk, weights[matches[0]])
