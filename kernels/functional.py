"""The one-shot functional API (SPEC section 2): prepare a layer, apply it once.

Each function lives beside its layer in its family's module (``kernels.kinds``); this module
gathers them. The same prepared layer runs, so results are bitwise the prepared layer's.
Callers that apply the same parameters repeatedly should keep a prepared layer instead
(``kernels.prepare``): it folds, casts and uploads parameters once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .kinds import kinds
from .kinds.batch_norm import batch_norm
from .kinds.fused_norms import add_layer_norm, add_rms_norm
from .kinds.grouped_norms import group_norm, instance_norm
from .kinds.linears import spectral_norm_linear, spectral_sigma, weight_norm_linear
from .kinds.row_norms import layer_norm, rms_norm

#: Each kind's one-shot function, called as ``BY_KIND[kind](x, **state_dict, **hyper)``.
BY_KIND: dict[str, Callable[..., Any]] = {name: k.functional for name, k in kinds().items()}

__all__ = [
    "BY_KIND",
    "add_layer_norm",
    "add_rms_norm",
    "batch_norm",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "rms_norm",
    "spectral_norm_linear",
    "spectral_sigma",
    "weight_norm_linear",
]
