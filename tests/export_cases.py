"""Layers of every kind with distinct per-channel parameters, shared by the export tests: each
kind's declared example, as float32 as a torch state_dict holds it."""

from __future__ import annotations

import numpy as np

from normserve import kernels
from normserve.kernels.kinds import Sizes, kinds

C = 8  # channels; 4 groups of 2 for group norm, so per-group and per-channel affines differ
SIZES = Sizes(features=64, channels=C, groups=4, spatial=(6, 5), in_features=32,
              out_features=16)
#: Shapes that cover more of the builders: RMSNorm over two trailing dims, a rank-3 input.
VARIANTS = {"rms_norm": Sizes(features=(4, 16)), "instance_norm": Sizes(channels=C,
                                                                         spatial=(30,))}


def state_dicts(seed: int = 1) -> dict[str, tuple[dict, dict, list[int]]]:
    """kind -> (hyper, params, input_shape), parameters as float32 like a torch state_dict."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, kind in kinds().items():
        example = kind.example(rng, VARIANTS.get(name, SIZES), True)
        params = {k: v.astype(np.float32) for k, v in example.params.items()}
        out[name] = (example.hyper, params, list(example.sample))
    return out


def layer(kind: str, seed: int = 1) -> kernels.PreparedLayer:
    hyper, params, shape = state_dicts(seed)[kind]
    prepared = kernels.prepare(kind, params, **hyper)
    prepared.sample_shape = tuple(shape)
    return prepared
