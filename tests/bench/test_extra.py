"""Without the ``bench`` extra each benchmark says in one line what to install (no traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

# A plain install: the module cannot be imported (None in sys.modules makes every import fail).
ENTRY_POINTS = {
    "torch": "from normserve.cli import main; sys.exit(main(['bench']))",
    "psutil": "from normserve.bench import load; sys.exit(load.main(['--quick']))",
}


@pytest.mark.parametrize("missing", list(ENTRY_POINTS))
def test_without_the_bench_extra_one_line_names_it(missing):
    code = f"import sys; sys.modules[{missing!r}] = None; {ENTRY_POINTS[missing]}"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "pip install 'normserve[bench]'" in proc.stderr and missing in proc.stderr
