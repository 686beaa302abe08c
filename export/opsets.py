"""Which ONNX opsets the exporter targets, and which normalisation operators each one has.

The default is the lowest opset at which every kind has its own operator (RMSNormalization
arrived in opset 23), provided the installed ONNX Runtime registers a kernel for it; older
runtimes get opset 17, where RMSNorm and GroupNorm are decomposed.
"""

from __future__ import annotations

import functools

import onnx

from .errors import OpsetError

#: LayerNormalization entered the standard domain in opset 17: the exporter's floor.
MIN_OPSET = 17
#: The opset where every kind has a native operator.
NATIVE_OPSET = 23

#: Operator -> first opset that has it with the semantics we need. GroupNormalization-18
#: takes per-*group* scale and bias (an ONNX mistake fixed in 21), so it counts from 21.
OPERATOR_SINCE: dict[str, int] = {
    "LayerNormalization": 17,
    "InstanceNormalization": 6,
    "GroupNormalization": 21,
    "RMSNormalization": 23,
}


def max_opset() -> int:
    """The newest opset the installed onnx package knows."""
    return onnx.defs.onnx_opset_version()


@functools.lru_cache(maxsize=1)
def _runtime_has_rmsnorm() -> bool:
    try:  # the kernel registry is not public API; fall back to the safe choice
        from onnxruntime.capi import _pybind_state as capi

        return any(k.op_name == "RMSNormalization" and k.domain == ""
                   and k.provider == "CPUExecutionProvider"
                   for k in capi.get_all_opkernel_def())
    except Exception:  # pragma: no cover - depends on the runtime build
        return False


def default_opset() -> int:
    """The opset ``to_onnx`` uses when none is given."""
    return NATIVE_OPSET if _runtime_has_rmsnorm() and max_opset() >= NATIVE_OPSET else MIN_OPSET


def check_opset(opset: int | None, kind: str) -> int:
    """A usable opset for ``kind``, or an OpsetError naming the kind and the range."""
    if opset is None:
        return default_opset()
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise OpsetError(f"opset must be an integer, got {opset!r}")
    if not MIN_OPSET <= opset <= max_opset():
        raise OpsetError(
            f"opset {opset} cannot express {kind}: this exporter writes opsets "
            f"{MIN_OPSET}..{max_opset()} (LayerNormalization needs {MIN_OPSET})"
        )
    return opset


def has_operator(op_type: str, opset: int) -> bool:
    """Whether ``op_type`` (with the semantics we need) exists at ``opset``."""
    return opset >= OPERATOR_SINCE[op_type]
