"""``normserve serve`` with its default, ``--workers auto`` (SPEC 10), as a real process: the
workers follow the CPUs it may use (here a fake cgroup CPU quota, and ``$NORMSERVE_CPUS``), the
kernel threads are split among them, and shared memory gets one worker, each said at start."""

from __future__ import annotations

import httpx
import numpy as np
from service_helpers import running_server

from normserve.service.cpus import CGROUP_ROOT_ENV, CPUS_ENV


def _workers(srv) -> set[int]:
    """The worker processes uvicorn started (its log names each), after 20 requests on fresh
    connections all succeeded."""
    for _ in range(20):
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            resp = http.post("/v2/models/rms_norm_512/infer", json={"inputs": [
                {"name": "input", "shape": [1, 512], "datatype": "FP32",
                 "data": np.ones(512).tolist()}]})
            assert resp.status_code == 200, resp.text
    return {int(line.split("[")[1].split("]")[0]) for line in srv.output().splitlines()
            if "Started server process" in line}


def test_auto_follows_the_cpus_and_says_so(tmp_path):
    (tmp_path / "cpu.max").write_text("100000 100000\n")  # a 1-CPU quota
    with running_server("--workers", "auto", env={CGROUP_ROOT_ENV: str(tmp_path)}) as srv:
        assert "INFO normserve: 1 worker(s) x 1 kernel thread(s)" in srv.output()
        assert "cgroup CPU quota 1" in srv.output()
    with running_server("--workers", "auto", env={CPUS_ENV: "2"}) as srv:
        assert "INFO normserve: 2 worker(s) x 1 kernel thread(s)" in srv.output()
        assert len(_workers(srv)) == 2
        # Each spawned worker logs too (its logging is set up anew): what it serves, its warm-up.
        assert srv.output().count("INFO normserve: warm-up: ") == 2
        assert httpx.get(f"{srv.url}/v2/health/ready").status_code == 200


def test_auto_runs_one_worker_with_shared_memory():
    with running_server("--workers", "auto", "--allow-shared-memory",
                        env={CPUS_ENV: "2"}) as srv:
        out = srv.output()
        assert "INFO normserve: 1 worker(s) x 2 kernel thread(s)" in out
        assert "one worker: --allow-shared-memory registers regions in one process" in out
