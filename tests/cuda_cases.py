"""The CUDA test matrix, shared by the simulator tests (tiny shapes) and the real-GPU tests.

Each case is a kind's declared example (``Sizes`` say how big) with an input shape; the oracle
(float64 references and SPEC tolerances) is ``kernels.oracle``, which shares no code with the
kernels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normserve import kernels
from normserve.kernels.kinds import Sizes, kinds
from normserve.kernels.oracle import assert_close, reference

__all__ = ["Case", "Sizes", "assert_matches_reference", "fused_matches", "make_case",
           "make_cases", "random_input"]


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


def make_case(kind: str, s: Sizes, seed: int = 0) -> Case:
    """``kind``'s declared example at sizes ``s``, every optional parameter present."""
    example = kinds()[kind].example(np.random.default_rng(seed), s, True)
    return Case(kind, example.shape(s.batch), example.params, example.hyper)


def make_cases(s: Sizes, seed: int = 0) -> list[Case]:
    """One case per kind of one input, every optional parameter present and non-trivial (the
    fused kinds, two inputs and two outputs, are tested on their own: ``fused_matches``)."""
    return [make_case(kind, s, seed) for kind, k in kinds().items()
            if len(k.layer.input_names) == 1]


def fused_matches(kind: str, x: np.ndarray, residual: np.ndarray, params: dict,
                  hyper: dict, device_outs=None) -> None:
    """A fused kind on the GPU: ``h`` bitwise the CPU's (the sum rounded once), ``y`` bitwise
    the GPU's own unfused norm of that ``h``, both close to the float64 reference."""
    layer = kernels.prepare(kind, params, device="cuda", **hyper)
    y, h = layer.apply(x, residual)
    assert isinstance(y, np.ndarray) and y.dtype == h.dtype == x.dtype
    _, h_cpu = layer.to("cpu").apply(x, residual)
    assert h.tobytes() == h_cpu.tobytes()
    unfused = layer.unfused_layer().apply(h)
    assert y.tobytes() == unfused.tobytes()
    y_ref, h_ref = reference(kind, (x, residual), params, hyper)
    assert_close(h, h_ref, x.dtype, err_msg=f"{kind} h")
    assert_close(y, y_ref, x.dtype, err_msg=f"{kind} y")


def random_input(shape: tuple[int, ...], dtype: np.dtype, seed: int = 1,
                 offset: float = 0.0) -> np.ndarray:
    """Normal data (plus ``offset``), rounded to ``dtype``."""
    rng = np.random.default_rng(seed)
    return (offset + rng.standard_normal(shape)).astype(dtype)


def assert_matches_reference(case: Case, x: np.ndarray, y: np.ndarray) -> None:
    """``y`` has x's dtype and agrees with the float64 reference within the SPEC tolerance."""
    assert isinstance(y, np.ndarray)
    assert_close(y, case.reference(x), x.dtype, err_msg=f"{case} {x.dtype}")
