"""``--workers auto`` (SPEC 10): the usable CPUs from the affinity, a cgroup v2 or v1 CPU quota
(a fake ``/sys/fs/cgroup`` tree through ``$NORMSERVE_CGROUP_ROOT``) and ``$NORMSERVE_CPUS``;
the workers and kernel threads planned from them (never more than the CPUs), bounded by
memory, one worker with shared memory; and the CLI's start-up line saying so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from normserve.service import server
from normserve.service.cpus import (
    CGROUP_ROOT_ENV,
    CPUS_ENV,
    MAX_AUTO_WORKERS,
    WORKER_RSS_BYTES,
    Cpus,
    plan_workers,
    usable_cpus,
)

AFFINITY = len(os.sched_getaffinity(0))
GIB = 1 << 30


def _cgroup(tmp_path: Path, **files: str) -> dict[str, str]:
    """A fake cgroup tree (file names with '/' as '__') and the environment that points at it."""
    for name, text in files.items():
        path = tmp_path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return {CGROUP_ROOT_ENV: str(tmp_path)}


def test_affinity_is_the_count_without_a_quota(tmp_path, monkeypatch):
    env = _cgroup(tmp_path, **{"cpu.max": "max 100000"})
    assert usable_cpus(env).count == AFFINITY
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    cpus = usable_cpus(env)
    assert cpus.count == 3 and "3 CPU(s) in the affinity mask" in cpus.why


@pytest.mark.parametrize(("files", "want"), [
    ({"cpu.max": "200000 100000"}, 2),                     # v2: 2 CPUs
    ({"cpu.max": "150000 100000"}, 2),                     # 1.5 rounds up
    ({"cpu.max": "50000 100000"}, 1),                      # half a CPU: one
    ({"cpu__cpu.cfs_quota_us": "300000", "cpu__cpu.cfs_period_us": "100000"}, 3),  # v1
    ({"cpu__cpu.cfs_quota_us": "-1", "cpu__cpu.cfs_period_us": "100000"}, 64),     # v1: none
    ({"cpu.max": "garbage"}, 64),                          # unreadable: no quota
])
def test_a_cgroup_cpu_quota_bounds_the_count(tmp_path, monkeypatch, files, want):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    cpus = usable_cpus(_cgroup(tmp_path, **files))
    assert cpus.count == want, cpus.why


def test_the_smallest_quota_of_the_cgroup_and_its_ancestors_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text("0::/kubepods/pod1/ctr\n")
    (proc / "meminfo").write_text("MemTotal:       16777216 kB\n")
    env = _cgroup(tmp_path / "cg", **{"cpu.max": "max 100000",
                                      "kubepods__pod1__cpu.max": "400000 100000",
                                      "kubepods__pod1__ctr__cpu.max": "max 100000",
                                      "kubepods__pod1__ctr__memory.max": str(4 * GIB)})
    cpus = usable_cpus(env, proc)
    assert cpus.count == 4 and cpus.memory_bytes == 4 * GIB


def test_the_env_override_wins(tmp_path):
    env = {**_cgroup(tmp_path, **{"cpu.max": "100000 100000"}), CPUS_ENV: "6"}
    cpus = usable_cpus(env)
    assert cpus.count == 6 and CPUS_ENV in cpus.why
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match=CPUS_ENV):
            usable_cpus({CPUS_ENV: bad})


@pytest.mark.parametrize("count", [1, 2, 3, 8, 16, 64])
def test_workers_times_threads_never_exceed_the_cpus(count):
    for requested in (None, 1, 2, 4):
        plan = plan_workers(requested, Cpus(count, "test", 64 * GIB))
        assert plan.workers * plan.threads <= max(count, plan.workers), (count, plan)
        if requested is None:
            assert plan.workers == min(count, MAX_AUTO_WORKERS)
            assert plan.threads == count // plan.workers
        else:
            assert plan.workers == requested


def test_auto_is_bounded_by_memory_and_by_the_cap():
    plan = plan_workers(None, Cpus(8, "test", 2 * GIB))  # half of 2 GiB holds 3 workers
    assert plan.workers == GIB // WORKER_RSS_BYTES == 3
    assert plan.threads == 2 and "bounded to 3" in plan.why
    plan = plan_workers(None, Cpus(64, "test", 1 << 40))
    assert (plan.workers, plan.threads) == (MAX_AUTO_WORKERS, 64 // MAX_AUTO_WORKERS)
    assert plan_workers(None, Cpus(4, "test", 256 << 20)).workers == 1  # never none


def test_auto_runs_one_worker_when_shared_memory_is_allowed():
    plan = plan_workers(None, Cpus(8, "test", 64 * GIB), allow_shared_memory=True)
    assert (plan.workers, plan.threads) == (1, 8)
    assert "--allow-shared-memory" in plan.why


def test_auto_runs_one_worker_without_a_writable_temporary_directory(monkeypatch, caplog):
    plan = plan_workers(None, Cpus(4, "test", 64 * GIB), scratch=False)
    assert (plan.workers, plan.threads) == (1, 4) and "$TMPDIR" in plan.why

    def nowhere() -> str:
        raise FileNotFoundError("No usable temporary directory found")

    monkeypatch.setattr(server.tempfile, "gettempdir", nowhere)
    monkeypatch.setenv(CPUS_ENV, "4")
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    args = server.build_parser().parse_args([])
    assert server._plan(args).workers == 1
    with pytest.raises(ValueError, match="writable temporary directory"):
        server._plan(server.build_parser().parse_args(["--workers", "2"]))


def test_numba_num_threads_set_by_the_user_is_each_workers_share():
    plan = plan_workers(None, Cpus(8, "test", 64 * GIB), user_threads=2)
    assert (plan.workers, plan.threads) == (4, 2)
    assert plan_workers(3, Cpus(8, "test"), user_threads=2).threads == 2  # explicit: as told


def test_the_cli_plans_and_says_so(monkeypatch, caplog):
    """What main() decides before it starts uvicorn: the plan, the threads in the environment
    (and in this process's Numba, whose pool has not started), and the line that says why."""
    ran = {}
    monkeypatch.setattr(server, "_run_uvicorn", lambda args: ran.setdefault("workers",
                                                                            args.workers))
    monkeypatch.setattr(server, "_set_kernel_threads", lambda n: ran.setdefault("threads", n))
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.setenv(server.ENV_VAR, "")  # main() sets them: restored afterwards
    monkeypatch.setattr(server.signal, "signal", lambda *a: None)
    monkeypatch.setenv(CPUS_ENV, "1")
    caplog.set_level("INFO", "normserve")
    assert server.main(["--grpc-port", "0"]) == 0
    assert ran == {"workers": 1, "threads": 1}
    assert "1 worker(s) x 1 kernel thread(s)" in caplog.text and CPUS_ENV in caplog.text
    ran.clear()
    monkeypatch.setenv(CPUS_ENV, "4")
    assert server.main(["--grpc-port", "0", "--allow-shared-memory"]) == 0
    assert ran == {"workers": 1, "threads": 4}
    assert "one worker: --allow-shared-memory" in caplog.text
    assert server.main(["--workers", "2", "--allow-shared-memory"]) == 2  # explicit: refused
    monkeypatch.setenv(CPUS_ENV, "zero")
    assert server.main([]) == 2


def test_workers_option_parses_auto_and_numbers():
    parse = server.build_parser().parse_args
    assert parse([]).workers is None and parse(["--workers", "auto"]).workers is None
    assert parse(["--workers", "3"]).workers == 3
    with pytest.raises(SystemExit):
        parse(["--workers", "0"])
