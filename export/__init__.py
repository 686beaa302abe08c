"""ONNX export of prepared layers, with parity proven against the kernels, and Triton repositories.

``to_onnx`` builds the graph, ``check_parity`` runs it in ONNX Runtime (and onnx's reference
evaluator) against the kernel, ``write_triton_repository`` lays out a model repository.
"""

from .builders import FORMS
from .errors import ExportError, OpsetError, ParityError
from .model import INPUT_NAME, OUTPUT_NAME, check_model, to_onnx
from .opsets import MIN_OPSET, default_opset, max_opset
from .parity import ParityReport, check_parity
from .triton import TritonExport, config_pbtxt, write_triton_repository

__all__ = [
    "FORMS",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "ExportError",
    "OpsetError",
    "ParityError",
    "ParityReport",
    "TritonExport",
    "check_model",
    "check_parity",
    "config_pbtxt",
    "default_opset",
    "max_opset",
    "to_onnx",
    "write_triton_repository",
]
