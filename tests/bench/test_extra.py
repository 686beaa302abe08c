"""Without the ``bench`` extra each benchmark says in one line what to install (no traceback)."""

from __future__ import annotations

import subprocess
import sys

# A plain install: psutil cannot be imported (None in sys.modules makes every import fail).
NO_PSUTIL = ("import sys; sys.modules['psutil'] = None; from normserve.bench import load; "
             "sys.exit(load.main(['--quick']))")


def test_load_benchmark_without_the_extra_names_it():
    proc = subprocess.run([sys.executable, "-c", NO_PSUTIL], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "pip install 'normserve[bench]'" in proc.stderr and "psutil" in proc.stderr
