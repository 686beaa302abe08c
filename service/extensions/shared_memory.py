"""Triton's system shared memory extension (SPEC 7), protocol-neutral.

A client on the same host puts tensors in a POSIX shared-memory object, registers it under a
region name, and then names ``shared_memory_region`` / ``_offset`` / ``_byte_size`` instead of
sending data: inputs are read from the mapping (a NumPy view, no copy), outputs are written
into it. Off unless the server runs with ``--allow-shared-memory``: registering makes the
server map an object a client names, which only a trusted local client should be able to do.

Safety: only objects under ``/dev/shm`` are mapped (no other path, no symlink, regular files
only); every offset and size is checked against the region before a view is made (a 400,
never a read or write outside it). Unregistering a region while a request still reads or
writes it is safe: the region leaves the registry at once, and the mapping itself is closed
only when the last view into it is gone (Python's ``mmap`` refuses to close under a view).

CUDA shared memory (``CudaSharedMemory``) is not served: its status is always empty,
unregistering succeeds with nothing to do, and registering is refused (501 / UNIMPLEMENTED)
pointing at system shared memory, so that clients that clean up both kinds at start
(perf_analyzer, tritonclient's examples) get clean answers.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np

from normserve.kernels.dtypes import datatype_name

from ..core.errors import InvalidInput, NotFound, PermissionDenied, Unsupported

SHM_DIR = "/dev/shm"
_KEY = re.compile(r"/?[^/\0]{1,255}")


@dataclass
class Region:
    """A registered region: ``byte_size`` bytes at ``offset`` of the object ``key``."""

    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "key": self.key, "offset": self.offset,
                "byte_size": self.byte_size}

    def view(self, offset: int, byte_size: int, field: str) -> memoryview:
        """``byte_size`` bytes at ``offset`` of the region (a 400 past its end)."""
        if offset < 0 or byte_size < 0 or offset + byte_size > self.byte_size:
            raise InvalidInput(f"{field}: offset {offset} + byte size {byte_size} is past "
                               f"the end of region {self.name!r} ({self.byte_size} bytes)")
        start = self.offset + offset
        return memoryview(self.mapping)[start:start + byte_size]


class SharedMemory:
    """The registered regions of one server process."""

    def __init__(self, allowed: bool) -> None:
        self.allowed = allowed
        self.regions: dict[str, Region] = {}

    def _check_allowed(self) -> None:
        if not self.allowed:
            raise PermissionDenied("system shared memory is off: start the server with "
                                   "--allow-shared-memory to use it")

    def register(self, name: str, key: Any, offset: Any, byte_size: Any) -> None:
        self._check_allowed()
        if not name:
            raise InvalidInput("name: a region needs a name")
        if name in self.regions:
            raise InvalidInput(f"name: region {name!r} is already registered; unregister it "
                               "first")
        if not isinstance(key, str) or not _KEY.fullmatch(key) or key.strip("/") in (".", ".."):
            raise InvalidInput(f"key: {key!r} is not a POSIX shared-memory object name")
        for field, value in (("offset", offset), ("byte_size", byte_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInput(f"{field}: must be an integer >= 0, got {value!r}")
        if byte_size == 0:
            raise InvalidInput("byte_size: a region must hold at least one byte")
        path = os.path.join(SHM_DIR, key.lstrip("/"))
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise InvalidInput(f"key: {key!r} is not a shared-memory object this server can "
                               f"open ({exc.strerror})") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise InvalidInput(f"key: {key!r} is not a shared-memory object")
            if offset + byte_size > info.st_size:
                raise InvalidInput(f"byte_size: offset {offset} + byte size {byte_size} is "
                                   f"past the end of {key!r} ({info.st_size} bytes)")
            mapping = mmap.mmap(fd, info.st_size)
        finally:
            os.close(fd)
        self.regions[name] = Region(name, key, offset, byte_size, mapping)

    def unregister(self, name: str | None = None) -> None:
        """One region, or every region when ``name`` is empty (Triton's semantics)."""
        self._check_allowed()
        names = [name] if name else list(self.regions)
        for n in names:
            region = self.regions.pop(n, None)
            if region is None:
                raise InvalidInput(f"region {n!r} is not registered")
            # A request still holding a view keeps the mapping open until it lets go.
            with contextlib.suppress(BufferError):
                region.mapping.close()

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        if name:
            return [self.region(name, "region").status()]
        return [r.status() for r in self.regions.values()]

    def region(self, name: Any, field: str) -> Region:
        region = self.regions.get(name) if isinstance(name, str) else None
        if region is None:
            raise InvalidInput(f"{field}: {name!r} is not a registered shared memory region")
        return region

    def view(self, params: dict[str, Any], field: str) -> memoryview | None:
        """The bytes a tensor's ``shared_memory_*`` parameters name, or None when it names
        no region."""
        name = params.get("shared_memory_region")
        if name is None:
            return None
        region = self.region(name, f"{field}.parameters.shared_memory_region")
        size = params.get("shared_memory_byte_size")
        offset = params.get("shared_memory_offset", 0)
        for key, value in (("shared_memory_byte_size", size), ("shared_memory_offset", offset)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInput(f"{field}.parameters.{key}: must be an integer >= 0")
        return region.view(offset, size, f"{field}.parameters")

    def input_array(self, params: dict[str, Any], dtype: np.dtype, shape: list[int],
                    count: int, field: str) -> np.ndarray | None:
        """The input a tensor's ``shared_memory_*`` parameters name, as a view of the mapped
        region (no copy), or None when it names no region."""
        view = self.view(params, field)
        if view is None:
            return None
        if len(view) != count * dtype.itemsize:
            raise InvalidInput(f"{field}.parameters.shared_memory_byte_size: {len(view)} "
                               f"bytes, but shape {shape} of {datatype_name(dtype)} needs "
                               f"{count * dtype.itemsize}")
        return np.frombuffer(view, dtype=dtype, count=count).reshape(shape)

    def output_region(self, params: dict[str, Any] | None, field: str
                      ) -> tuple[memoryview | None, dict[str, Any] | None]:
        """The region an output is to be written to, and the parameters that named it."""
        view = self.view(params or {}, field)
        if view is None:
            return None, None
        return view, {k: v for k, v in params.items() if k.startswith("shared_memory_")}


class CudaSharedMemory:
    """Triton's CUDA shared memory extension, answered but not served: no region can be
    registered, so none ever is. As Triton answers with no region of the kind registered:
    the status of all regions is an empty list, that of a named one NOT_FOUND, and
    unregistering (all, or any name) succeeds with nothing to do."""

    def register(self, name: str) -> None:
        raise Unsupported(f"CUDA shared memory is not supported by this server: region "
                          f"{name!r} cannot be registered (the server does not map CUDA IPC "
                          "handles); use system shared memory (--allow-shared-memory)")

    def unregister(self, name: str | None = None) -> None:
        """Nothing is registered: nothing to do (Triton too ignores an unknown name)."""

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        if name:
            raise NotFound(f"region {name!r}: no CUDA shared memory region of that name is "
                           "registered (this server does not support CUDA shared memory)")
        return []
