"""Layer cases shared by the kernel tests, from each kind's declared example (their
references and tolerances are ``kernels.oracle``'s)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from normserve.kernels.kinds import Sizes, kinds
from normserve.kernels.oracle import TOLERANCES, reference

DTYPES = list(TOLERANCES)
#: The kinds of one input and one output, which the generic kernel tests drive; the fused
#: kinds (two of each) have their own tests (tests/kernels/test_fused*.py).
ONE_INPUT_KINDS = sorted(name for name, kind in kinds().items()
                         if len(kind.layer.input_names) == 1)


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
    """A case of ``kind`` (its declared example) whose statistics rows, or dot products, run
    over ``features`` values: 6 channels in 3 groups, the kind's trailing extent ``features``."""
    sizes = Sizes(features=features, channels=6, groups=3, spatial=(features,),
                  in_features=features, out_features=5)
    example = kinds()[kind].example(np.random.default_rng(seed), sizes, affine)
    return Case(kind, example.sample, example.params, example.hyper)


def sample_input(case: Case, batch: int, dtype: np.dtype, seed: int = 1,
                 offset: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (offset + rng.standard_normal((batch, *case.sample))).astype(dtype)
