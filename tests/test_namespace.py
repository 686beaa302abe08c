"""The package installs under one import namespace, ``normserve``, and claims no generic names."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import importlib.util, json, sys
import normserve
from normserve import export, kernels, service
found = {}
for name in ("kernels", "export", "service"):
    spec = importlib.util.find_spec(name)
    found[name] = None if spec is None else spec.origin
print(json.dumps({"found": found, "api": sorted(normserve.__all__),
                  "layer_norm": normserve.layer_norm is kernels.layer_norm,
                  "version": normserve.__version__, "service": service.__version__}))
"""


def test_normserve_namespace_and_no_top_level_packages(tmp_path):
    # Run outside the repository so the source folders are not on sys.path by accident.
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, check=True)
    got = json.loads(proc.stdout)
    for name, origin in got["found"].items():
        # Another distribution may own the name (Hugging Face's `kernels`); never this repository.
        assert origin is None or not Path(origin).is_relative_to(ROOT), (name, origin)
    assert got["layer_norm"] is True
    assert {"layer_norm", "prepare", "KINDS", "kernels", "export", "service"} <= set(got["api"])
    assert got["version"] == got["service"] != "0+unknown"


def test_every_source_package_is_installed():
    """pyproject lists packages explicitly (the folders map into ``normserve``): a new
    subpackage missing from the list imports here (editable install) but not from a wheel."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {"normserve." + ".".join(init.parent.relative_to(ROOT).parts)
             for top in ("kernels", "export", "service", "bench")
             for init in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
