"""Pydantic models of the request and response bodies: they validate JSON headers and document
the routes in ``/openapi.json`` (which schemathesis and client generators read).

Tensor ``data`` is typed loosely on purpose: its values are checked and converted by NumPy in
``http.codec``, which is both faster and able to say which element is wrong.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from ..core.errors import InvalidInput
from ..core.protocol import DATATYPE_NAMES

Shape = list[StrictInt]
_DATATYPES = f"{', '.join(DATATYPE_NAMES[:-1])} or {DATATYPE_NAMES[-1]}"


class TensorInput(BaseModel):
    """One input tensor of an inference request (Open Inference Protocol)."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(min_length=1, max_length=256)
    shape: Shape = Field(max_length=16)
    datatype: StrictStr = Field(description=_DATATYPES)
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_size: byte length in the binary section")
    data: list[Any] | None = Field(default=None, description="row-major values, flat or nested")


class RequestedOutput(BaseModel):
    """An output a client asks for; ``parameters.binary_data`` picks its encoding."""

    model_config = ConfigDict(extra="forbid")

    name: StrictStr = Field(min_length=1, max_length=256)
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """The JSON header of ``POST /v2/models/{name}/infer``."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr | None = Field(default=None, max_length=1024)
    model_name: StrictStr | None = Field(
        default=None, max_length=256, description="optional; must be the model addressed")
    model_version: StrictStr | None = Field(
        default=None, max_length=64, description="optional; must be the version addressed")
    parameters: dict[str, Any] | None = Field(
        default=None, description="binary_data_output (bool), timeout (microseconds); "
                                  "others are ignored, as Triton does")
    inputs: list[TensorInput] = Field(
        max_length=64, description="the model's inputs by name (a model of one input takes "
                                   "it under any name)")
    outputs: list[RequestedOutput] | None = Field(
        default=None, max_length=64,
        description="the outputs to return, in this order; none named: every output")


class Tensor(BaseModel):
    """A JSON tensor of the v1 routes."""

    model_config = ConfigDict(extra="forbid")

    shape: Shape = Field(max_length=16)
    datatype: StrictStr = "FP32"
    data: list[Any]


class NormalizeRequest(BaseModel):
    """``POST /v1/normalize``: a layer given inline (kind, hyper-parameters, params), an input."""

    model_config = ConfigDict(extra="allow")

    kind: StrictStr
    params: dict[str, Tensor] = Field(default_factory=dict, max_length=16)
    input: Tensor


class RegisterRequest(BaseModel):
    """``PUT /v1/models/{name}``: config.json fields plus the parameters."""

    model_config = ConfigDict(extra="allow")

    kind: StrictStr
    input_shape: Shape | None = None
    max_batch_size: StrictInt | None = None
    max_queue_delay_us: StrictInt | None = None
    max_queue_size: StrictInt | None = None
    params: dict[str, Tensor] = Field(default_factory=dict, max_length=16)


def _field(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def validate(model: type[BaseModel], data: Any) -> Any:
    """``model`` validated from parsed JSON, or a 400 naming the first bad field."""
    if not isinstance(data, dict):
        raise InvalidInput("body: must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidInput(f"{_field(tuple(first['loc']))}: {first['msg']}") from None


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline(v, defs) for v in node]
    return node


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` documenting a JSON body that the handler reads itself (refs inlined,
    so the schema stands alone inside the OpenAPI document)."""
    schema = model.model_json_schema()
    schema = _inline(schema, schema.get("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
