"""A served model's configuration in Triton's ``ModelConfig`` schema (SPEC 7).

What ``tritonclient``'s ``get_model_config`` and Triton tooling read: name, backend,
``max_batch_size``, every input and output (the layer's names) with per-sample dims (``-1``
free), ``dynamic_batching`` with the batcher's real settings, and normserve's own fields
under ``parameters`` (string values, as Triton's ``ModelParameter`` holds them). One dict,
in protobuf's field names: the HTTP body, and ``json_format.ParseDict`` turns it into the
gRPC message unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from ..core.protocol import DATATYPE_NAMES, DECLARED_DATATYPE

if TYPE_CHECKING:
    from ..models.model import Model


def triton_config(model: Model) -> dict[str, Any]:
    """The ``ModelConfig`` of a served model."""
    batcher = model.batcher
    config: dict[str, Any] = {
        "name": model.name,
        "platform": "",
        "backend": "normserve",
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": batcher.max_batch_size,
        "input": [{"name": name, "data_type": f"TYPE_{DECLARED_DATATYPE}",
                   "format": "FORMAT_NONE", "dims": list(model.sample_shape)}
                  for name in model.input_names],
        "output": [{"name": name, "data_type": f"TYPE_{DECLARED_DATATYPE}",
                    "dims": model.output_sample_shape()} for name in model.output_names],
        "instance_group": [{"name": model.name, "count": 1,
                            "kind": "KIND_GPU" if model.layer.device == "cuda" else "KIND_CPU"}],
        "parameters": {
            "kind": {"string_value": model.config.kind},
            "hyper": {"string_value": orjson.dumps(model.layer.describe()).decode()},
            "datatypes": {"string_value": ",".join(DATATYPE_NAMES)},
            "batch_wait": {"string_value": "adaptive" if batcher.adaptive else "deadline"},
        },
    }
    if batcher.batching:
        config["dynamic_batching"] = {
            "max_queue_delay_microseconds": round(batcher.max_delay_s * 1e6),
            "preserve_ordering": False,
            "default_queue_policy": {"max_queue_size": batcher.max_queue_size,
                                     "timeout_action": "REJECT"},
        }
    return config
