"""The workers of one server (``--workers N``) agreeing on what they serve (SPEC 8).

The repository is the source of truth; what every worker needs besides is a signal that it
changed, and a way for the worker that made a change to know when the others have it. Both
live in a small runtime folder the server's parent process creates for its workers
(``Settings.runtime_dir``; never inside the repository, so replicas sharing a repository do
not mix): ``generation`` counts the changes made through any worker, ``loaded.json`` holds
the set of models explicit model control asks for, and ``workers/<pid>`` is each worker's
state (the generation it has applied, whether it is ready). A worker follows ``generation``
and, when it moves, rescans the repository; the worker that made a change waits until every
live worker reports that generation before it answers. Writes are atomic renames under an
exclusive ``flock`` of ``lock``; reads need no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _write(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Cluster:
    """This worker's view of its siblings (a no-op stand-in when the server has one worker)."""

    def __init__(self, runtime_dir: str | None, workers: int) -> None:
        self.root = Path(runtime_dir) if runtime_dir else None
        self.workers = workers
        self.pid = os.getpid()
        self.applied = 0
        self.ready = False
        if self.root is not None:
            (self.root / "workers").mkdir(parents=True, exist_ok=True)

    @property
    def active(self) -> bool:
        return self.root is not None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.root is not None
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    # --- this worker's state --------------------------------------------------------------
    def report(self, applied: int | None = None, ready: bool | None = None) -> None:
        if applied is not None:
            self.applied = max(self.applied, applied)
        if ready is not None:
            self.ready = ready
        if self.root is not None:
            _write(self.root / "workers" / str(self.pid),
                   {"applied": self.applied, "ready": self.ready})

    def leave(self) -> None:
        if self.root is not None:
            with contextlib.suppress(OSError):
                (self.root / "workers" / str(self.pid)).unlink()

    def _states(self) -> dict[int, dict[str, Any]]:
        assert self.root is not None
        states = {}
        for path in (self.root / "workers").iterdir():
            if path.name.isdigit() and _alive(int(path.name)):
                states[int(path.name)] = _read(path, {"applied": 0, "ready": False})
        return states

    def all_ready(self) -> bool:
        """Every worker of the server has started and is ready (one worker: this one)."""
        if self.root is None:
            return True
        states = self._states()
        return len(states) >= self.workers and all(s.get("ready") for s in states.values())

    # --- changes --------------------------------------------------------------------------
    def generation(self) -> int:
        return 0 if self.root is None else int(_read(self.root / "generation", 0))

    def changed(self, loaded: set[str] | None = None, drop: str | None = None) -> int:
        """Record a change (and, for explicit model control, the new wanted set, or a name
        no longer wanted); the new generation, which this worker has applied already."""
        if self.root is None:
            return 0
        with self._locked():
            generation = self.generation() + 1
            if loaded is not None or drop is not None:
                wanted = self.wanted() | (loaded or set())
                wanted.discard(drop)
                _write(self.root / "loaded.json", sorted(wanted))
            _write(self.root / "generation", generation)
        self.report(applied=generation)
        return generation

    def wanted(self) -> set[str]:
        """The models explicit model control has been asked to serve (through any worker)."""
        return set() if self.root is None else set(_read(self.root / "loaded.json", []))

    def seed_wanted(self, names: set[str]) -> None:
        """At start: the ``--load-model`` names, unless a sibling recorded the set already."""
        if self.root is None:
            return
        with self._locked():
            if not (self.root / "loaded.json").exists():
                _write(self.root / "loaded.json", sorted(names))

    async def wait_applied(self, generation: int, timeout_s: float) -> tuple[int, int]:
        """Wait until every live worker has applied ``generation`` (at most ``timeout_s``);
        (how many have, how many there are)."""
        if self.root is None:
            return 1, 1
        deadline = time.monotonic() + timeout_s
        while True:
            states = self._states()
            done = sum(s.get("applied", 0) >= generation for s in states.values())
            if done >= len(states) or time.monotonic() >= deadline:
                return done, len(states)
            await asyncio.sleep(0.02)
