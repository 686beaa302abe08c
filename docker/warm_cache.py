"""Compile every kernel a repository's models need into Numba's cache (NUMBA_CACHE_DIR).

Run at image build time so that a container's start loads machine code from the cache instead of
compiling it: the server's warm-up then takes seconds. It warms exactly what the server's own
warm-up runs (every dtype of every model), so no first request pays for a compilation either.

usage: python warm_cache.py [REPOSITORY]   (default: the built-in demo repository)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from normserve.repository import load_model, scan_repository
from normserve.service.models.registry import DEMO_REPOSITORY


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else DEMO_REPOSITORY
    if not os.environ.get("NUMBA_CACHE_DIR"):
        # Without it Numba writes next to the sources, where the runtime user may not write.
        print("warm_cache: NUMBA_CACHE_DIR is not set", file=sys.stderr)
        return 2
    folders, skipped = scan_repository(root)
    if not folders:
        print(f"warm_cache: no model folders in {root}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    for folder in folders:
        _, layer = load_model(folder)
        layer.warmup()
        print(f"warm_cache: {folder.name} compiled")
    print(f"warm_cache: {len(folders)} model(s) in {time.perf_counter() - start:.1f} s "
          f"into {os.environ['NUMBA_CACHE_DIR']}; skipped: {skipped or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
