"""Layer cases shared by the kernel tests: parameters and input shapes per kind (their
references and tolerances are ``kernels.oracle``'s)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normserve.kernels.oracle import TOLERANCES, reference

DTYPES = list(TOLERANCES)


@dataclass
class Case:
    """A layer (kind, params, hyper) with its reference and the per-sample shape of its inputs."""

    kind: str
    sample: tuple[int, ...]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    hyper: dict[str, Any] = field(default_factory=dict)

    def reference(self, x: np.ndarray) -> np.ndarray:
        return reference(self.kind, x, self.params, self.hyper)

    def __str__(self) -> str:
        return f"{self.kind}{list(self.sample)}{'-affine' if self.params else ''}"


def make_case(kind: str, features: int, affine: bool = True, seed: int = 0) -> Case:
    """A case of ``kind`` whose normalised extent (or input size) is ``features``."""
    rng = np.random.default_rng(seed)

    def vec(n: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
        return rng.uniform(lo, hi, n)

    if kind in ("layer_norm", "rms_norm"):
        p = {"weight": vec(features, 0.5, 1.5)} if affine else {}
        if affine and kind == "layer_norm":
            p["bias"] = vec(features)
        return Case(kind, (features,), p, {"normalized_shape": [features]})
    if kind == "batch_norm":
        c = features
        p = {"running_mean": vec(c), "running_var": vec(c, 0.2, 2.0)}
        if affine:
            p |= {"weight": vec(c, 0.5, 1.5), "bias": vec(c)}
        return Case(kind, (c, 5), p)
    if kind == "instance_norm":
        p = {"weight": vec(3, 0.5, 1.5), "bias": vec(3)} if affine else {}
        return Case(kind, (3, features), p)
    if kind == "group_norm":
        p = {"weight": vec(6, 0.5, 1.5), "bias": vec(6)} if affine else {}
        return Case(kind, (6, features), p, {"num_groups": 3})
    out_features = 5
    w = rng.standard_normal((out_features, features))
    bias = {"bias": vec(out_features)} if affine else {}
    if kind == "weight_norm":
        g = rng.uniform(0.5, 2.0, (out_features, 1))
        return Case(kind, (features,), {"weight_v": w, "weight_g": g, **bias})
    if kind == "spectral_norm":
        # torch stores u, v after power iteration: near the leading singular vectors.
        left, _, right = np.linalg.svd(w, full_matrices=False)
        u = left[:, 0] + 1e-3 * rng.standard_normal(out_features)
        v = right[0] + 1e-3 * rng.standard_normal(features)
        uv = {"weight_u": u / np.linalg.norm(u), "weight_v": v / np.linalg.norm(v)}
        return Case(kind, (features,), {"weight_orig": w, **bias, **(uv if affine else {})})
    raise AssertionError(kind)


def sample_input(case: Case, batch: int, dtype: np.dtype, seed: int = 1,
                 offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (offset + rng.standard_normal((batch, *case.sample))).astype(dtype)
