"""What the core is asked to run: one decoded inference request, whichever transport."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class InferCall:
    """A decoded inference request: its one input and how the client wants the answer."""

    request_id: str | None
    input_name: str
    array: np.ndarray
    binary_output: bool
    timeout_s: float | None
    model_name: str | None = None  # as the body names it (kserve's clients send it)
    model_version: str | None = None
    field: str = "inputs[0]"  # where the input sits in the request, for error messages
    #: The shared-memory bytes the output goes to, and the client's parameters naming them
    #: (echoed in the answer), when the client asked for that.
    output_region: memoryview | None = None
    output_params: dict[str, Any] | None = None
