"""One served model: its config, prepared layer, batcher and readiness, and the checks and
metadata that follow from its shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from normserve.kernels import PreparedLayer
from normserve.repository import ModelConfig

from ..batching.batcher import Batcher
from ..core.calls import InferCall
from ..core.errors import InvalidInput
from ..core.protocol import DATATYPE_NAMES, DECLARED_DATATYPE, VERSION
from ..core.tensors import Selected, bind_inputs, select_outputs

#: How many per-sample shapes a model remembers as accepted (models with a free dimension
#: see many; the check of a new one is only slower).
ACCEPTED_SHAPES = 64


@dataclass(eq=False)
class Model:
    """One served model: its config, prepared layer, batcher and readiness."""

    name: str
    config: ModelConfig
    layer: PreparedLayer
    batcher: Batcher
    ready: bool = False
    fingerprint: tuple | None = None  # of its folder when loaded (poll mode reloads changes)
    onnx_cache: dict[int, bytes] = field(default_factory=dict)
    #: Per-sample shapes accepted before (at most ACCEPTED_SHAPES): their check is a lookup.
    accepted: set[tuple[int, ...]] = field(default_factory=set)

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.layer.sample_shape or ())

    def output_sample_shape(self) -> list[int]:
        return list(self.layer.sample_output_shape(self.sample_shape))

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model's inputs as its metadata names them (the layer's, in order)."""
        return self.layer.input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.layer.output_names

    @cached_property
    def every_output(self) -> Selected:
        """What a request naming no output gets: every output, in order."""
        return tuple((i, None) for i in range(len(self.layer.output_names)))

    def bind(self, call: InferCall) -> tuple[np.ndarray, ...]:
        """The request's input arrays in the layer's order, each checked against this
        model's shape (a 400 naming the input at fault)."""
        if not call.more_inputs and len(self.layer.input_names) == 1:  # the hot case
            self.check_input(call.array.shape, call.field + ".shape")
            return (call.array,)
        bound = bind_inputs(call, self.layer.input_names, self.name)
        self.check_input(bound[0][0].shape, bound[0][1] + ".shape")  # the others agree
        return tuple(array for array, _ in bound)

    def select(self, call: InferCall) -> Selected:
        """The outputs to answer with (a 400 naming an unknown one)."""
        return select_outputs(call, self.layer.output_names, self.every_output, self.name)

    def check_input(self, shape: tuple[int, ...], field_name: str) -> None:
        """A 400 unless ``shape`` is a non-empty batch of this model's per-sample shape."""
        if shape[1:] in self.accepted and shape[0] >= 1:
            return
        sample = self.sample_shape
        if len(shape) != len(sample) + 1:
            raise InvalidInput(f"{field_name}: {self.name} takes shape "
                               f"{[-1, *sample]} (batch first), got {list(shape)}")
        if shape[0] < 1:
            raise InvalidInput(f"{field_name}[0]: the batch dimension must be >= 1")
        for i, (want, got) in enumerate(zip(sample, shape[1:], strict=True), start=1):
            if got < 1 or (want != -1 and want != got):
                raise InvalidInput(f"{field_name}[{i}]: {self.name} takes shape "
                                   f"{[-1, *sample]} (batch first), got {list(shape)}")
        try:
            self.layer.output_shape(tuple(shape))
        except ValueError as exc:
            raise InvalidInput(f"{field_name}: {exc}") from None
        if len(self.accepted) < ACCEPTED_SHAPES:
            self.accepted.add(tuple(shape[1:]))

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": f"normserve_{self.config.kind}",
            "inputs": [{"name": name, "datatype": DECLARED_DATATYPE,
                        "shape": [-1, *self.sample_shape]} for name in self.input_names],
            "outputs": [{"name": name, "datatype": DECLARED_DATATYPE,
                         "shape": [-1, *self.output_sample_shape()]}
                        for name in self.output_names],
            "parameters": {"datatypes": DATATYPE_NAMES},
        }
