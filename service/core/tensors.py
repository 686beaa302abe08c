"""Checks of a request's tensor that both transports make before anything is allocated:
its datatype, its declared shape against the limits, the names of its inputs and outputs,
the ``timeout`` parameter; and the binding of a request's inputs and outputs to a model's
names."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from normserve.kernels.dtypes import DATATYPES, datatype_name

from .calls import InferCall, OutputRequest
from .errors import InvalidInput, PayloadTooLarge

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
    if shape and min(shape) < 0:
        i, d = next((i, d) for i, d in enumerate(shape) if d < 0)
        raise InvalidInput(f"{field}[{i}]: must be >= 0, got {d}")
    count = math.prod(shape)
    if count > limits.max_tensor_elements:
        raise PayloadTooLarge(f"{field}: {count} elements are above the limit of "
                              f"{limits.max_tensor_elements}")
    return count


def check_input_names(names: list[str]) -> None:
    """A request's input names, whichever model: at least one, none twice (which inputs a
    model takes is ``bind_inputs``'s to check)."""
    if not names:
        raise InvalidInput("inputs: at least one input is required, got 0")
    if len(set(names)) != len(names):
        raise InvalidInput("inputs: duplicate input names")


def check_output_name(name: str, seen: set[str], field: str) -> None:
    """A requested output's name, whichever model: none twice (``select_outputs`` checks
    them against the model's)."""
    if name in seen:
        raise InvalidInput(f"{field}.name: duplicate output {name!r}")
    seen.add(name)


def _names(names: tuple[str, ...]) -> str:
    return ", ".join(repr(n) for n in names)


def bind_inputs(call: InferCall, names: tuple[str, ...], model: str | None = None
                ) -> tuple[tuple[np.ndarray, str], ...]:
    """The request's input arrays (with their fields) in the order of the model's input
    ``names``, or a 400 naming the input at fault.

    A model of one input takes one input of any name (as every model did before models of
    several inputs); a model of several takes each of its names once and nothing else, all
    of one shape and datatype (their rows are joined row-aligned in a batch)."""
    if len(names) == 1:
        if call.more_inputs:
            raise InvalidInput(f"inputs: exactly one input is required, got "
                               f"{1 + len(call.more_inputs)}")
        return ((call.array, call.field),)
    model = "the model" if model is None else f"model {model!r}"
    given = {call.input_name: (call.array, call.field)}
    for name, array, field in call.more_inputs:
        given[name] = (array, field)
    for name, (_, field) in given.items():
        if name not in names:
            raise InvalidInput(f"{field}.name: unknown input {name!r}; {model} takes "
                               f"{_names(names)}")
    missing = [n for n in names if n not in given]
    if missing:
        raise InvalidInput(f"inputs: input {missing[0]!r} is missing; {model} takes "
                           f"{_names(names)}")
    bound = tuple(given[n] for n in names)
    first = bound[0][0]
    for name, (array, field) in zip(names[1:], bound[1:], strict=True):
        if array.dtype != first.dtype:
            raise InvalidInput(f"{field}.datatype: input {name!r} is "
                               f"{datatype_name(array.dtype)} but {names[0]!r} is "
                               f"{datatype_name(first.dtype)}; they must agree")
        if array.shape != first.shape:
            raise InvalidInput(f"{field}.shape: input {name!r} has shape {list(array.shape)} "
                               f"but {names[0]!r} has {list(first.shape)}; they must agree")
    return bound


#: What ``select_outputs`` answers: per output returned, its index among the model's output
#: names and the request's entry for it (None when the request names no output).
Selected = tuple[tuple[int, OutputRequest | None], ...]


def select_outputs(call: InferCall, names: tuple[str, ...], every: Selected,
                   model: str | None = None) -> Selected:
    """The outputs to return: those the request names, in its order, or ``every`` one of the
    model's (``names``) when it names none; a 400 naming an unknown one."""
    if call.outputs is None:
        return every
    selected = []
    for out in call.outputs:
        try:
            selected.append((names.index(out.name), out))
        except ValueError:
            owner = "the model" if model is None else f"model {model!r}"
            raise InvalidInput(
                f"{out.field}.name: unknown output {out.name!r}; "
                + (f"the only output is {names[0]!r}" if len(names) == 1
                   else f"{owner}'s outputs are {_names(names)}")) from None
    return tuple(selected)


def timeout_param(timeout: Any) -> float | None:
    """The ``timeout`` request parameter (microseconds, Triton's) in seconds."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int)
                                or timeout <= 0):
        raise InvalidInput("parameters.timeout: must be a positive integer (microseconds)")
    return None if timeout is None else timeout / 1e6
