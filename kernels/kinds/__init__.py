"""The kinds of layer normserve serves, one module per family, each kind declared once.

``base`` holds what every prepared layer shares, ``registry`` the declarations; each family
module (``row_norms``, ``batch_norm``, ``grouped_norms``, ``linears``) defines its layers and
one-shot functions and registers its kinds. Importing this package registers them all.
"""

from __future__ import annotations

from . import batch_norm, grouped_norms, linears, row_norms  # noqa: F401 (they register)
from .base import PreparedLayer
from .registry import Benchmarks, Example, Kind, OnnxNode, Sizes, get, kinds, prepare

#: Each kind's prepared-layer class, by name.
KINDS: dict[str, type[PreparedLayer]] = {name: k.layer for name, k in kinds().items()}

__all__ = ["KINDS", "Benchmarks", "Example", "Kind", "OnnxNode", "PreparedLayer", "Sizes", "get",
           "kinds", "prepare"]
