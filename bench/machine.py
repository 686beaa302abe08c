"""The machine a benchmark ran on, for its table header: the CPU model and the vector
extensions the kernels can use (from ``/proc/cpuinfo``), so that tables from different machines
are never compared blind (issue 22: the same code ran at 0.9x on one host, 0.5x on another).

  >>> describe()
  'AMD EPYC, 2 CPU(s); vector: avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16'
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

#: The extensions worth naming, in this order, as Linux spells the flags (x86, then Arm's).
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
                "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16",
                "asimd", "sve", "sve2", "bf16", "i8mm")


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> tuple[str, set[str]]:
    """(CPU model, flags) of the first processor listed; ("", set()) where unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and not model:
            model = " ".join(value.split())
        elif key in ("flags", "features") and not flags:  # x86, Arm
            flags = set(value.split())
        if model and flags:
            break
    return model, flags


def vector_extensions(flags: set[str]) -> list[str]:
    return [f for f in VECTOR_FLAGS if f in flags]


def describe(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """One line: CPU model, usable CPUs, vector extensions."""
    model, flags = read_cpuinfo(cpuinfo)
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return f"{model}, {cpus} CPU(s); vector: {' '.join(vector_extensions(flags)) or 'none named'}"
