"""A small ONNX graph builder: unique names, typed initializers, opset-aware helpers.

Kind builders (``export.builders``) describe their maths with it and never touch protobuf.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import NodeProto, TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
DOUBLE = TensorProto.DOUBLE
FLOAT16 = TensorProto.FLOAT16

_NUMPY = {FLOAT: np.float32, DOUBLE: np.float64, FLOAT16: np.float16}


class GraphBuilder:
    """Collects nodes and initializers for one graph at one opset."""

    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[NodeProto] = []
        self.initializers: list[TensorProto] = []
        self._used: dict[str, int] = {}
        #: What the builders emitted: "native" operators and/or "stable" decompositions.
        self.used_forms: set[str] = set()
        #: The element type of the graph's inputs and outputs (it computes in FP32).
        self.io_type = FLOAT
        #: Emit ONNX Runtime's fused contrib operators where a kind has one.
        self.ort_fused = False
        #: Operator domains besides the standard one the nodes use.
        self.domains: set[str] = set()

    def fresh(self, prefix: str) -> str:
        """A name not used before in this graph."""
        n = self._used.get(prefix, 0)
        self._used[prefix] = n + 1
        return prefix if n == 0 else f"{prefix}_{n}"

    def initializer(self, name: str, value: Any, elem_type: int) -> str:
        """A constant tensor of ``elem_type`` (parameters stay float64 until this cast)."""
        arr = np.asarray(value, dtype=_NUMPY[elem_type])
        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def ints(self, name: str, values: Sequence[int]) -> str:
        arr = np.asarray(list(values), dtype=np.int64)
        name = self.fresh(name)
        self.initializers.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str | None = None,
           **attrs: Any) -> str:
        """Append a single-output node and return its output name."""
        out = self.fresh(name or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=self.fresh(f"{out}_node"), **attrs))
        return out

    def multi(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str | None],
              domain: str = "", **attrs: Any) -> list[str]:
        """Append a node of several outputs (None for one left unused, named ""); return the
        names given to the used ones."""
        names = ["" if o is None else self.fresh(o) for o in outputs]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, domain=domain or None,
                                           name=self.fresh(f"{op_type.lower()}_node"), **attrs))
        if domain:
            self.domains.add(domain)
        return [n for n in names if n]

    def cast(self, x: str, elem_type: int, name: str = "cast") -> str:
        return self.op("Cast", [x], name, to=elem_type)

    def reduce_mean(self, x: str, axes: Sequence[int], name: str = "mean") -> str:
        """ReduceMean keeping dims; its axes moved from attribute to input in opset 18."""
        if self.opset < 18:
            return self.op("ReduceMean", [x], name, axes=list(axes), keepdims=1)
        return self.op("ReduceMean", [x, self.ints("axes", axes)], name, keepdims=1)
