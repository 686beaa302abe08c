"""docker/entrypoint.sh with a read-only Numba cache (a read-only root filesystem): the image's
compiled kernels are copied to the first writable place and NUMBA_CACHE_DIR points there, so
the server loads them rather than compile (the image itself: docker/smoke.sh). Run with a fake
``normserve`` that prints what it was given, as an unprivileged user (root writes anywhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ENTRYPOINT = Path(__file__).resolve().parents[2] / "docker" / "entrypoint.sh"
NOBODY = 65534


@pytest.fixture
def work() -> Iterator[Path]:
    """A scratch folder the unprivileged user can reach (pytest's tmp_path is root's, 0700)."""
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o755)
        yield Path(folder)


def _run(tmp_path: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "normserve"
    fake.write_text('#!/bin/sh\necho "NUMBA_CACHE_DIR=$NUMBA_CACHE_DIR"\n'
                    'ls "$NUMBA_CACHE_DIR/kernels_x"\n')
    fake.chmod(0o755)
    cmd = ["sh", str(ENTRYPOINT)]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop privileges")
        cmd = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, env={
        "PATH": f"{bin_dir}:/usr/bin:/bin", "NORMSERVE_MODEL_REPOSITORY": str(tmp_path / "none"),
        **env})


def _image_cache(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    (cache / "kernels_x").mkdir(parents=True)
    (cache / "kernels_x" / "f.nbi").write_text("index")
    (cache / "kernels_x" / "f.nbc").write_text("code")
    for path in (cache / "kernels_x", cache):
        path.chmod(0o555)  # read-only for everyone but root
    return cache


def test_a_read_only_cache_is_copied_to_a_writable_tmp(work):
    cache = _image_cache(work)
    scratch = work / "scratch"
    scratch.mkdir(mode=0o777)
    scratch.chmod(0o777)
    run = _run(work, {"NUMBA_CACHE_DIR": str(cache), "TMPDIR": str(scratch)})
    assert run.returncode == 0, run.stderr
    copy = scratch / "normserve-numba-cache"
    assert f"NUMBA_CACHE_DIR={copy}" in run.stdout
    assert run.stdout.split()[1:] == ["f.nbc", "f.nbi"]
    assert "its compiled kernels copied to" in run.stderr


def test_a_writable_cache_is_used_where_it_is(work):
    cache = _image_cache(work)
    for path in (cache, cache / "kernels_x"):
        path.chmod(0o777)
    run = _run(work, {"NUMBA_CACHE_DIR": str(cache), "TMPDIR": str(work)})
    assert run.returncode == 0, run.stderr
    assert f"NUMBA_CACHE_DIR={cache}\n" in run.stdout and "copied" not in run.stderr
