"""The ``bench`` extra: what the benchmarks import beyond normserve's own dependencies.

Each benchmark's ``main`` calls ``require`` first, so a plain ``pip install normserve`` gets one
line naming the extra instead of a traceback.
"""

from __future__ import annotations

import importlib
import sys

#: What the ``bench`` extra installs, by import name.
BENCH_EXTRA = ("torch", "threadpoolctl", "psutil")


def missing_extra(names: tuple[str, ...] = BENCH_EXTRA) -> list[str]:
    """Those of ``names`` that cannot be imported here."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def require(prog: str, names: tuple[str, ...] = BENCH_EXTRA) -> bool:
    """Whether ``names`` import; if not, say on stderr which are missing and how to get them."""
    missing = missing_extra(names)
    if missing:
        print(f"{prog} needs the bench extra (missing: {', '.join(missing)}): "
              "pip install 'normserve[bench]'", file=sys.stderr)
    return not missing
