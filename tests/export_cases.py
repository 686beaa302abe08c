"""Layers of every kind with distinct per-channel parameters, shared by the export tests."""

from __future__ import annotations

import numpy as np

from normserve import kernels

C = 8  # channels; 4 groups of 2 for group norm, so per-group and per-channel affines differ


def state_dicts(seed: int = 1) -> dict[str, tuple[dict, dict, list[int]]]:
    """kind -> (hyper, params, input_shape), parameters as float32 like a torch state_dict."""
    r = np.random.default_rng(seed)

    def f(*shape):
        return r.standard_normal(shape).astype(np.float32)

    return {
        "layer_norm": ({"normalized_shape": [64]}, {"weight": f(64), "bias": f(64)}, [64]),
        "rms_norm": ({"normalized_shape": [4, 16]}, {"weight": f(4, 16)}, [4, 16]),
        "batch_norm": ({}, {"running_mean": f(C), "running_var": (r.random(C) + 0.5)
                            .astype(np.float32), "weight": f(C), "bias": f(C)}, [C, 6, 5]),
        "group_norm": ({"num_groups": 4}, {"weight": f(C), "bias": f(C)}, [C, 6, 5]),
        "instance_norm": ({}, {"weight": f(C), "bias": f(C)}, [C, 30]),
        "weight_norm": ({}, {"weight_v": f(16, 32), "weight_g": (r.random((16, 1)) + 0.5)
                             .astype(np.float32), "bias": f(16)}, [32]),
        "spectral_norm": ({}, {"weight_orig": f(16, 32), "bias": f(16)}, [32]),
    }


def layer(kind: str, seed: int = 1) -> kernels.PreparedLayer:
    hyper, params, shape = state_dicts(seed)[kind]
    prepared = kernels.prepare(kind, params, **hyper)
    prepared.sample_shape = tuple(shape)
    return prepared
