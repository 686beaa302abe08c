"""Each kind's maths as ONNX nodes, one module per family (mirroring ``kernels.kinds``); every
builder registers itself with ``@onnx_builder``. ``registry`` and ``common`` aside, every
module here is a family, imported with this package: a new family is one new module."""

import importlib
import pkgutil

from .registry import FORMS, builder_for, builders, is_auto_stable, onnx_builder

_NOT_FAMILIES = frozenset({"common", "registry"})
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _NOT_FAMILIES:
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["FORMS", "builder_for", "builders", "is_auto_stable", "onnx_builder"]
