"""normserve: serve neural-network normalisation layers.

The repository's top-level folders install under this one namespace (see pyproject.toml):
``normserve.kernels`` (the maths), ``normserve.export`` (ONNX) and ``normserve.service`` (the
KServe v2 server). ``import normserve`` gives the kernels' public API (SPEC section 2); the
exporter and the service, which pull in ONNX and FastAPI, load only when first touched.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import kernels
from .kernels import *  # noqa: F403  (the public API is kernels.__all__)
from .kernels import __all__ as _kernel_api

try:
    __version__ = version("normserve")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = [*_kernel_api, "export", "kernels", "service"]  # noqa: F405

_LAZY = ("export", "service")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
