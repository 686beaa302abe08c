"""What the core is asked to run: one decoded inference request, whichever transport."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class OutputRequest:
    """An output a request names: its name and place in the request, its encoding (the
    output's ``binary_data`` parameter; None: the request's default) and the shared-memory
    bytes it goes to (with the client's parameters naming them; the answer, as Triton's,
    then carries the output's name, datatype and shape only)."""

    name: str
    field: str  # "outputs[i]", for error messages
    binary: bool | None = None
    region: memoryview | None = None
    params: dict[str, Any] | None = None


@dataclass
class InferCall:
    """A decoded inference request: its inputs and how the client wants the answer.

    The first input of the request is ``input_name``/``array``/``field``; a request with
    more (a model of several inputs) has the others in ``more_inputs``, in the request's
    order. The core matches them to the model's input names (``Model.bind``).
    """

    request_id: str | None
    input_name: str
    array: np.ndarray
    binary_output: bool
    timeout_s: float | None
    model_name: str | None = None  # as the body names it (kserve's clients send it)
    model_version: str | None = None
    field: str = "inputs[0]"  # where the input sits in the request, for error messages
    #: The shared-memory bytes the output goes to, and the client's parameters naming them
    #: (not echoed: Triton's answer has none), when the client asked for that: of the one
    #: output a request names (``outputs`` has it too), or, when it names none, of a
    #: model's first output.
    output_region: memoryview | None = None
    output_params: dict[str, Any] | None = None
    #: The request's inputs after the first: (name, array, field) each.
    more_inputs: tuple[tuple[str, np.ndarray, str], ...] = ()
    #: The outputs the request names, in its order; None when it names none (Triton's
    #: semantics: then every output of the model is returned).
    outputs: list[OutputRequest] | None = None
