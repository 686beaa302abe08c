"""The fixed names of the Open Inference Protocol as normserve serves it, in one place."""

from __future__ import annotations

from normserve.kernels.dtypes import DATATYPES

#: The one version of a model served (the protocol's versions are strings).
VERSION = "1"
#: The first input's name in every model's metadata (``PreparedLayer.input_names``; a
#: request may name a model's one input anything, a model of several takes their names).
INPUT = "input"
#: The first output of every model (``PreparedLayer.output_names``).
OUTPUT = "output"
#: The datatype a model's metadata and config declare (they hold one per tensor; the models
#: accept every one of ``DATATYPE_NAMES``).
DECLARED_DATATYPE = "FP32"
#: Every datatype a model accepts, in the protocol's names.
DATATYPE_NAMES = list(DATATYPES)
#: The protocol extensions both transports serve (``GET /v2``, gRPC ServerMetadata).
EXTENSIONS = ["binary_tensor_data", "model_configuration", "statistics", "logging",
              "model_repository"]
