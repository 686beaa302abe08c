"""Each kind's maths as ONNX nodes, one module per family (mirroring ``kernels.kinds``); every
builder registers itself with ``@onnx_builder``. Importing this package registers them all."""

from . import batch_norm, grouped_norms, linears, row_norms  # noqa: F401 (they register)
from .registry import FORMS, builder_for, builders, is_auto_stable, onnx_builder

__all__ = ["FORMS", "builder_for", "builders", "is_auto_stable", "onnx_builder"]
