"""The ONNX builders by kind: each registers itself with ``@onnx_builder`` beside its maths.

A builder takes the graph, the prepared layer, the FP32 input tensor's name, the input rank
and the form, and returns the FP32 output tensor's name. Forms:

- ``native``: the kind's own ONNX operator; an OpsetError when the opset lacks it.
- ``stable``: a two-pass decomposition with float64 statistics, as the kernels compute them.
- ``auto``: native where ONNX Runtime's operator holds the SPEC tolerances, stable elsewhere
  (a builder registered with ``auto_stable=True`` says the runtime's operator does not).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import ExportError
from ..graph import GraphBuilder

FORMS = ("auto", "native", "stable")

Builder = Callable[[GraphBuilder, Any, str, int, str], str]

_BUILDERS: dict[str, Builder] = {}
_AUTO_STABLE: set[str] = set()


def onnx_builder(*kinds: str, auto_stable: bool = False) -> Callable[[Builder], Builder]:
    """Register the decorated function as the ONNX builder of ``kinds``.

    ``auto_stable``: ONNX Runtime (CPU) computes these kinds' native operator less accurately
    than the SPEC asks, so form ``auto`` decomposes them.
    """
    def register(builder: Builder) -> Builder:
        for kind in kinds:
            if kind in _BUILDERS:
                raise ValueError(f"kind {kind!r} has two ONNX builders")
            _BUILDERS[kind] = builder
            if auto_stable:
                _AUTO_STABLE.add(kind)
        return builder

    return register


def builder_for(kind: str) -> Builder:
    try:
        return _BUILDERS[kind]
    except KeyError:
        raise ExportError(f"no ONNX builder for kind {kind!r}; known: {sorted(_BUILDERS)}"
                          ) from None


def builders() -> dict[str, Builder]:
    """Every registered builder by kind."""
    return dict(_BUILDERS)


def is_auto_stable(kind: str) -> bool:
    """Whether form ``auto`` decomposes ``kind`` (see ``onnx_builder``)."""
    return kind in _AUTO_STABLE
