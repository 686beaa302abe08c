"""The kinds of layer normserve serves, one module per family, each kind declared once.

``base`` holds what every prepared layer shares and ``registry`` the declarations; every other
module here is a family (``row_norms``, ``fused_norms``, ``batch_norm``, ``grouped_norms``,
``linears``) that defines its layers and one-shot functions and registers its kinds.
Importing this package imports every family, so a new family is one new module.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import PreparedLayer
from .registry import Benchmarks, Example, Kind, OnnxNode, Sizes, get, kinds, prepare

_NOT_FAMILIES = frozenset({"base", "registry"})
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_FAMILIES:
        importlib.import_module(f"{__name__}.{_module.name}")

#: Each kind's prepared-layer class, by name.
KINDS: dict[str, type[PreparedLayer]] = {name: k.layer for name, k in kinds().items()}

__all__ = ["KINDS", "Benchmarks", "Example", "Kind", "OnnxNode", "PreparedLayer", "Sizes", "get",
           "kinds", "prepare"]
