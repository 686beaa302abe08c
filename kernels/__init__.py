"""normserve kernels: normalisation forward passes on the CPU (Numba) and NVIDIA GPUs.

The functional API (SPEC section 2) prepares a layer and applies it once; services and
exporters keep a prepared layer (``prepare``) and apply it many times.
"""

from .devices import cuda_available
from .functional import (
    add_layer_norm,
    add_rms_norm,
    batch_norm,
    group_norm,
    instance_norm,
    layer_norm,
    rms_norm,
    spectral_norm_linear,
    spectral_sigma,
    weight_norm_linear,
)
from .kinds import KINDS, PreparedLayer, prepare

__all__ = [
    "KINDS",
    "PreparedLayer",
    "add_layer_norm",
    "add_rms_norm",
    "batch_norm",
    "cuda_available",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "prepare",
    "rms_norm",
    "spectral_norm_linear",
    "spectral_sigma",
    "weight_norm_linear",
]
