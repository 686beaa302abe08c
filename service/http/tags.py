"""The groups of the interactive API page (``/docs``): every route names one of these tags."""

from __future__ import annotations

HEALTH = "health"
METADATA = "metadata"
INFERENCE = "inference"
REPOSITORY = "repository"
MODEL_CONFIG = "model configuration"
STATISTICS = "statistics"
LOGGING = "logging"
SHARED_MEMORY = "shared memory"
V1 = "v1"

#: FastAPI's ``openapi_tags``: the order of the groups on the page, and a line on each.
OPENAPI_TAGS = [
    {"name": HEALTH, "description": "Liveness and readiness of the server and its models."},
    {"name": METADATA, "description": "The server's and each model's metadata (Open "
                                      "Inference Protocol)."},
    {"name": INFERENCE, "description": "Run a model: JSON tensors or the binary tensor data "
                                       "extension, batched with other requests."},
    {"name": REPOSITORY, "description": "Triton's model repository extension: list, load and "
                                        "unload models (admin token)."},
    {"name": MODEL_CONFIG, "description": "Triton's model configuration extension: a model's "
                                          "ModelConfig."},
    {"name": STATISTICS, "description": "Triton's statistics extension: per-model counts "
                                        "and times."},
    {"name": LOGGING, "description": "Triton's logging extension: read and change the log "
                                     "settings (trace settings are not served: 501)."},
    {"name": SHARED_MEMORY, "description": "Triton's system shared memory extension (with "
                                           "--allow-shared-memory). CUDA shared memory is "
                                           "not served: no region is registered, "
                                           "registering one answers 501."},
    {"name": V1, "description": "normserve's own routes: inline normalisation, ONNX export, "
                                "run-time registration, the model list, Prometheus metrics."},
]
