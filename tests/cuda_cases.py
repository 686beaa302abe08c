"""The CUDA test matrix, shared by the simulator tests (tiny shapes) and the real-GPU tests.

Each case is a kind with parameters and an input shape; the oracle (float64 references and
SPEC tolerances) is ``kernels.oracle``, which shares no code with the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normserve import kernels
from normserve.kernels.oracle import assert_close, reference


@dataclass(frozen=True)
class Sizes:
    """Shapes of one matrix run: the simulator's are tiny, the GPU's realistic."""

    batch: int
    features: int  # layer/RMS norm row length
    channels: int
    groups: int
    spatial: tuple[int, ...]
    in_features: int
    out_features: int


@dataclass
class Case:
    kind: str
    shape: tuple[int, ...]
    params: dict[str, np.ndarray]
    hyper: dict[str, Any] = field(default_factory=dict)

    def reference(self, x: np.ndarray) -> np.ndarray:
        return reference(self.kind, x, self.params, self.hyper)

    def layer(self, device: str = "cuda") -> kernels.PreparedLayer:
        return kernels.prepare(self.kind, self.params, device=device, **self.hyper)

    def __repr__(self) -> str:
        return f"{self.kind}{list(self.shape)}"


def make_cases(s: Sizes, seed: int = 0) -> list[Case]:
    """One case per kind, with every optional parameter present and non-trivial."""
    rng = np.random.default_rng(seed)

    def vec(n: int, low: float = -1.0, high: float = 1.0) -> np.ndarray:
        return rng.uniform(low, high, n)

    n, f, c, g = s.batch, s.features, s.channels, s.groups
    img = (n, c, *s.spatial)
    ln = {"weight": vec(f, 0.5, 1.5), "bias": vec(f)}
    rms = {"weight": vec(f, 0.5, 1.5)}
    bn = {"running_mean": vec(c), "running_var": vec(c, 0.2, 2.0), "weight": vec(c, 0.5, 1.5),
          "bias": vec(c)}
    aff = {"weight": vec(c, 0.5, 1.5), "bias": vec(c)}
    v = rng.standard_normal((s.out_features, s.in_features))
    wn = {"weight_v": v, "weight_g": vec(s.out_features, 0.5, 1.5).reshape(-1, 1),
          "bias": vec(s.out_features)}
    sn = {"weight_orig": v, "bias": vec(s.out_features)}
    return [
        Case("layer_norm", (n, f), ln, {"normalized_shape": [f]}),
        Case("rms_norm", (n, f), rms, {"normalized_shape": [f]}),
        Case("batch_norm", img, bn),
        Case("instance_norm", img, aff),
        Case("group_norm", img, aff, {"num_groups": g}),
        Case("weight_norm", (n, s.in_features), wn),
        Case("spectral_norm", (n, s.in_features), sn),
    ]


def random_input(shape: tuple[int, ...], dtype: np.dtype, seed: int = 1,
                 offset: float = 0.0) -> np.ndarray:
    """Normal data (plus ``offset``), rounded to ``dtype``."""
    rng = np.random.default_rng(seed)
    return (offset + rng.standard_normal(shape)).astype(dtype)


def assert_matches_reference(case: Case, x: np.ndarray, y: np.ndarray) -> None:
    """``y`` has x's dtype and agrees with the float64 reference within the SPEC tolerance."""
    assert isinstance(y, np.ndarray)
    assert_close(y, case.reference(x), x.dtype, err_msg=f"{case} {x.dtype}")
