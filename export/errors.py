"""Named export errors, so callers (CLI, service) can map each to an exit code or HTTP status."""

from __future__ import annotations

from typing import Any


class ExportError(ValueError):
    """A layer that cannot be exported as asked; the message says what to change."""


class OpsetError(ExportError):
    """The requested opset cannot express the layer (or is outside what this exporter targets)."""


class ParityError(ExportError):
    """The exported graph disagrees with the kernel beyond the SPEC tolerances."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report
