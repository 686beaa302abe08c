"""normserve: serve neural-network normalisation layers.

The repository's top-level folders install under this one namespace (see pyproject.toml):
``normserve.kernels`` (the maths), ``normserve.export`` (ONNX), ``normserve.service`` (the
KServe v2 server) and ``normserve.bench`` (benchmarks, imported by no product module). This
folder holds what they share: ``normserve.repository`` (the model-folder format) and
``normserve.cli`` (the ``normserve`` command). ``import normserve`` gives the kernels' public API
(SPEC section 2) and the repository's load/save; the exporter and the service, which pull in
ONNX and FastAPI, load only when first touched.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import kernels
from .kernels import *  # noqa: F403  (the public API is kernels.__all__)
from .kernels import __all__ as _kernel_api
from .repository import ModelConfig, ModelError, load_model, save_model

try:
    __version__ = version("normserve")  # one source of truth: pyproject.toml
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = [*_kernel_api, "ModelConfig", "ModelError", "export", "kernels", "load_model",  # noqa: F405
           "save_model", "service"]

_LAZY = ("export", "service")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
