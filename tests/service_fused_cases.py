"""The demo repository's fused models (two inputs, two outputs: issue 21, SPEC 9) as the
service tests use them: inputs of each, the kernel's answer checked against the float64
reference, the binary-extension body tritonclient.http sends for several inputs, and
tritonclient's clients of a served app."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from service_helpers import DEMO, demo_config, demo_params

from normserve.kernels.dtypes import datatype_name
from normserve.kernels.oracle import assert_close, reference
from normserve.repository import load_model

#: The fused demo models and their features.
FUSED = {"add_rms_norm_512": 512, "add_layer_norm_256": 256}
OUTPUTS = ("output", "residual_out")


def fused_pair(name: str, rows: int, seed: int, dtype: Any = np.float32
               ) -> tuple[np.ndarray, np.ndarray]:
    """An ``input`` and a ``residual`` for the fused demo model ``name``."""
    rng = np.random.default_rng(seed)
    n = FUSED[name]
    return ((rng.standard_normal((rows, n)) * 2 + 0.5).astype(dtype),
            rng.standard_normal((rows, n)).astype(dtype))


def fused_expected(name: str, x: np.ndarray, r: np.ndarray) -> dict[str, np.ndarray]:
    """The demo model's kernel answer by output name (the service must give it bitwise),
    checked against the float64 reference first."""
    y, h = load_model(DEMO / name)[1].apply_all((x, r))
    ref_y, ref_h = reference(demo_config(name)["kind"], (x, r), demo_params(name),
                             demo_config(name))
    assert_close(y, ref_y, x.dtype, name)
    assert_close(h, ref_h, x.dtype, name)
    return {"output": y, "residual_out": h}


def binary_infer_body(*tensors: tuple[str, np.ndarray], outputs: list[dict] | None = None
                      ) -> tuple[bytes, str]:
    """What tritonclient.http sends: every named input in the binary section, in order; the
    body and its Inference-Header-Content-Length."""
    raws = [np.ascontiguousarray(a).tobytes() for _, a in tensors]
    head: dict[str, Any] = {"inputs": [
        {"name": n, "shape": list(a.shape), "datatype": datatype_name(a.dtype),
         "parameters": {"binary_data_size": len(raw)}}
        for (n, a), raw in zip(tensors, raws, strict=True)]}
    if outputs is not None:
        head["outputs"] = outputs
    header = orjson.dumps(head)
    return header + b"".join(raws), str(len(header))


def triton_client(transport: str, server: Any) -> Any:
    """tritonclient's client (``"http"`` or ``"grpc"``) of a served app (``Server``,
    ``InThread``)."""
    if transport == "http":
        return httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    return grpcclient.InferenceServerClient(server.grpc_url)


def client_module(client: Any) -> Any:
    """tritonclient's module of ``client`` (for its InferInput, InferRequestedOutput)."""
    return grpcclient if isinstance(client, grpcclient.InferenceServerClient) else httpclient


def fused_inputs(mod: Any, x: np.ndarray, r: np.ndarray, datatype: str = "FP32",
                 binary: bool = True) -> list[Any]:
    """tritonclient ``InferInput``s (of ``mod``) for a fused model's ``input`` and
    ``residual``; ``binary``: HTTP's binary extension or JSON data."""
    made = []
    for n, a in (("input", x), ("residual", r)):
        inp = mod.InferInput(n, list(a.shape), datatype)
        if mod is httpclient:
            inp.set_data_from_numpy(a, binary_data=binary)
        else:
            inp.set_data_from_numpy(a)
        made.append(inp)
    return made
