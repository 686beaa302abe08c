"""Checks of a request's tensor that both transports make before anything is allocated:
its datatype, its declared shape against the limits, one input, outputs named ``output``,
the ``timeout`` parameter."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from normserve.kernels.dtypes import DATATYPES

from .errors import InvalidInput, PayloadTooLarge
from .protocol import OUTPUT

SUPPORTED = ", ".join(DATATYPES)


@dataclass(frozen=True)
class Limits:
    """How large a tensor a request may declare (``Settings.max_tensor_elements``, ``max_rank``)."""

    max_tensor_elements: int
    max_rank: int = 8


def dtype_of(datatype: str, field: str) -> np.dtype:
    dtype = DATATYPES.get(datatype)
    if dtype is None:
        raise InvalidInput(f"{field}: {datatype!r} is not supported; use one of {SUPPORTED}")
    return dtype


def check_shape(shape: list[int], limits: Limits, field: str) -> int:
    """The element count of a declared shape, refusing negative dims, high ranks and huge sizes."""
    if len(shape) > limits.max_rank:
        raise InvalidInput(f"{field}: rank {len(shape)} is above the limit of {limits.max_rank}")
    for i, d in enumerate(shape):
        if d < 0:
            raise InvalidInput(f"{field}[{i}]: must be >= 0, got {d}")
    count = math.prod(shape)
    if count > limits.max_tensor_elements:
        raise PayloadTooLarge(f"{field}: {count} elements are above the limit of "
                              f"{limits.max_tensor_elements}")
    return count


def check_one_input(names: list[str]) -> None:
    """Every model takes one input: a 400 for none, several, or duplicates."""
    if len(names) != 1:
        if len(set(names)) != len(names):
            raise InvalidInput("inputs: duplicate input names")
        raise InvalidInput(f"inputs: exactly one input is required, got {len(names)}")


def check_outputs(names: list[str]) -> None:
    """Requested outputs may only name ``output``, once."""
    seen = set()
    for i, name in enumerate(names):
        if name != OUTPUT:
            raise InvalidInput(f"outputs[{i}].name: unknown output {name!r}; the only "
                               f"output is {OUTPUT!r}")
        if name in seen:
            raise InvalidInput(f"outputs[{i}].name: duplicate output {name!r}")
        seen.add(name)


def timeout_param(timeout: Any) -> float | None:
    """The ``timeout`` request parameter (microseconds, Triton's) in seconds."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                or timeout <= 0):
        raise InvalidInput("parameters.timeout: must be a positive integer (microseconds)")
    return None if timeout is None else timeout / 1e6
