"""One served model: its config, prepared layer, batcher and readiness, and the checks and
metadata that follow from its shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from normserve.kernels import PreparedLayer
from normserve.repository import ModelConfig

from ..batching.batcher import Batcher
from ..core.errors import InvalidInput
from ..core.protocol import DATATYPE_NAMES, DECLARED_DATATYPE, INPUT, OUTPUT, VERSION


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

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.layer.sample_shape or ())

    def output_sample_shape(self) -> list[int]:
        return list(self.layer.sample_output_shape(self.sample_shape))

    def check_input(self, shape: tuple[int, ...], field_name: str) -> None:
        """A 400 unless ``shape`` is a non-empty batch of this model's per-sample shape."""
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

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "versions": [VERSION],
            "platform": f"normserve_{self.config.kind}",
            "inputs": [{"name": INPUT, "datatype": DECLARED_DATATYPE,
                        "shape": [-1, *self.sample_shape]}],
            "outputs": [{"name": OUTPUT, "datatype": DECLARED_DATATYPE,
                         "shape": [-1, *self.output_sample_shape()]}],
            "parameters": {"datatypes": DATATYPE_NAMES},
        }
