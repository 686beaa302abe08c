"""How many CPUs this process may use, and how ``--workers auto`` shares them (SPEC 10).

``os.cpu_count()`` is the machine's count: a process pinned to some cores (its affinity) or in a
container with a CPU limit (the cgroup's CPU quota) may use fewer, and N workers each running
a Numba pool of all the machine's cores would oversubscribe them. What is read:

- the affinity (``os.sched_getaffinity``);
- the cgroup CPU quota: v2 ``cpu.max`` (``"quota period"`` or ``"max period"``) of this
  process's cgroup and its ancestors (the smallest wins), else v1
  ``cpu/cpu.cfs_quota_us`` / ``cpu.cfs_period_us``; a fractional quota rounds up (1.5 CPUs:
  2), as Kubernetes' downward API rounds ``limits.cpu``;
- the memory the process may use: the cgroup's ``memory.max`` (v1:
  ``memory/memory.limit_in_bytes``) and ``MemTotal``.

The cgroup tree is read under ``$NORMSERVE_CGROUP_ROOT`` (default ``/sys/fs/cgroup``; tests
point it at a fake tree) and ``$NORMSERVE_CPUS`` replaces the count altogether.

``--workers auto`` runs one worker per usable CPU, bounded: one idle worker holds ~330 MB RSS
(the demo repository's 10 models: Python, NumPy, Numba/LLVM and the compiled kernels, FastAPI,
gRPC; uvicorn spawns its workers, so nothing is shared between them), so auto runs at most
``MAX_AUTO_WORKERS``, and no more than half the memory limit holds. Past that bound the CPUs
are not idle: they go to each worker's kernel threads (workers x threads = the usable CPUs,
never more). Forking the workers after the imports (gunicorn's preload) would share the
modules' pages, but uvicorn spawns its workers, and a Numba thread pool or gRPC started
before a fork do not survive it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT_ENV = "NORMSERVE_CGROUP_ROOT"
CPUS_ENV = "NORMSERVE_CPUS"
#: One idle worker serving the demo repository (measured: 333 MB RSS), rounded up.
WORKER_RSS_BYTES = 340 << 20
#: The most workers auto runs (16 x ~330 MB = ~5.3 GB); more CPUs become kernel threads.
MAX_AUTO_WORKERS = 16
#: v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages), not "max".
_V1_UNLIMITED = 1 << 60


@dataclass(frozen=True)
class Cpus:
    """The CPUs this process may use, and where that number came from."""

    count: int
    why: str
    memory_bytes: int | None = None  # what the process may hold (None: unknown)


@dataclass(frozen=True)
class Plan:
    """Workers and each worker's kernel threads, and why."""

    workers: int
    threads: int
    why: str


def usable_cpus(env: dict[str, str] | None = None, proc: Path = Path("/proc")) -> Cpus:
    """The CPUs (and memory) this process may use; ``ValueError`` on a bad ``$NORMSERVE_CPUS``."""
    env = os.environ if env is None else env
    root = Path(env.get(CGROUP_ROOT_ENV) or "/sys/fs/cgroup")
    own = _own_cgroup(proc)
    memory = _memory_limit(root, own, proc)
    if env.get(CPUS_ENV):
        text = env[CPUS_ENV]
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"${CPUS_ENV}: must be a whole number >= 1, got {text!r}")
        return Cpus(int(text), f"${CPUS_ENV}={text}", memory)
    affinity = _affinity()
    quota = _cpu_quota(root, own)
    why = f"{affinity} CPU(s) in the affinity mask"
    count = affinity
    if quota is not None:
        why += f", cgroup CPU quota {quota:g}"
        count = max(1, min(affinity, math.ceil(quota)))
    return Cpus(count, why, memory)


def plan_workers(requested: int | None, cpus: Cpus, *, allow_shared_memory: bool = False,
                 user_threads: int | None = None, scratch: bool = True) -> Plan:
    """``requested`` workers (None: auto) and the kernel threads of each.

    Auto: one worker per usable CPU within the memory bound, one worker when shared memory is
    allowed (regions are registered in one process), and ``cpus // user_threads`` workers when
    ``NUMBA_NUM_THREADS`` is set, one without a writable temporary directory (``scratch``:
    several workers agree through a folder there, ``models.cluster``). Threads:
    ``NUMBA_NUM_THREADS`` when set, else the usable CPUs shared between the workers."""
    if requested is not None:
        threads = user_threads or max(1, cpus.count // requested)
        return Plan(requested, threads, f"--workers {requested}; {cpus.why}")
    why = f"{cpus.why}"
    if allow_shared_memory:
        workers = 1
        why += "; one worker: --allow-shared-memory registers regions in one process"
    elif not scratch:
        workers = 1
        why += "; one worker: no writable temporary directory ($TMPDIR) for workers to share"
    elif user_threads:
        workers = max(1, cpus.count // user_threads)
        why += f"; NUMBA_NUM_THREADS={user_threads} per worker"
    else:
        workers = cpus.count
    bound = MAX_AUTO_WORKERS
    if cpus.memory_bytes is not None:
        bound = min(bound, max(1, cpus.memory_bytes // 2 // WORKER_RSS_BYTES))
    if workers > bound:
        why += (f"; bounded to {bound} (each worker holds ~{WORKER_RSS_BYTES >> 20} MB; at "
                f"most {MAX_AUTO_WORKERS}, and half the memory limit)")
        workers = bound
    threads = user_threads or max(1, cpus.count // workers)
    return Plan(workers, threads, why)


def _affinity() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _own_cgroup(proc: Path) -> str:
    """This process's cgroup v2 path ("/" inside a container's cgroup namespace)."""
    try:
        for line in (proc / "self" / "cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:].strip() or "/"
    except OSError:
        pass
    return "/"


def _v2_files(root: Path, own: str, name: str) -> list[Path]:
    """``name`` in this process's cgroup and each ancestor, as far as they are visible."""
    parts = [p for p in own.split("/") if p]
    dirs = [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]
    return [d / name for d in dirs if (d / name).is_file()]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cpu_quota(root: Path, own: str) -> float | None:
    """The smallest CPU quota (in CPUs) over this cgroup and its ancestors; None: no quota."""
    quotas = []
    for path in _v2_files(root, own, "cpu.max"):
        quota, _, period = (_read(path) or "max").partition(" ")
        quotas.append(_ratio(quota, period))
    if not any(quotas):  # cgroup v1
        for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
            quotas.append(_ratio(*(_read(root / folder / f"cpu.cfs_{k}_us") or ""
                                   for k in ("quota", "period"))))
    quotas = [q for q in quotas if q is not None]
    return min(quotas) if quotas else None


def _ratio(quota: str, period: str) -> float | None:
    """quota / period in CPUs; None for "max", -1 (v1's no limit) or anything unreadable."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _memory_limit(root: Path, own: str, proc: Path) -> int | None:
    limits = []
    for path in _v2_files(root, own, "memory.max"):
        text = _read(path)
        if text and text.isdigit():
            limits.append(int(text))
    v1 = _read(root / "memory" / "memory.limit_in_bytes")
    if v1 and v1.isdigit() and int(v1) < _V1_UNLIMITED:
        limits.append(int(v1))
    for line in (_read(proc / "meminfo") or "").splitlines():
        if line.startswith("MemTotal:"):
            limits.append(int(line.split()[1]) * 1024)
    return min(limits) if limits else None
