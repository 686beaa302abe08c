"""HTTP side of docker/smoke.sh, run with the host's project venv (numpy, safetensors).

  smoke_client.py ready URL TIMEOUT_S      wait for GET URL/v2/health/ready == 200
  smoke_client.py status URL               print the HTTP status of GET URL
  smoke_client.py infer URL MODEL_DIR      one v2 inference on a layer_norm model, checked
                                           against a float64 reference computed here
  smoke_client.py grpc HOST:PORT MODEL_DIR the same over gRPC (tritonclient.grpc), after
                                           checking the gRPC health service says SERVING
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np


def status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return 0  # refused or reset: the port forward is up before the server is


def wait_ready(base: str, limit: float) -> int:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if status(f"{base}/v2/health/ready") == 200:
            return 0
        time.sleep(0.1)
    print(f"not ready after {limit:.0f} s", file=sys.stderr)
    return 1


def layer_norm_reference(x: np.ndarray, config: dict, params: dict) -> np.ndarray:
    """float64 layer norm over the trailing normalized_shape axes (SPEC 1), written out here
    rather than imported, so the check does not trust the code it tests."""
    axes = tuple(range(-len(config["normalized_shape"]), 0))
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=axes, keepdims=True)
    var = ((x64 - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x64 - mean) / np.sqrt(var + config.get("eps", 1e-5))
    if "weight" in params:
        y = y * params["weight"].astype(np.float64)
    if "bias" in params:
        y = y + params["bias"].astype(np.float64)
    return y


def infer(base: str, model_dir: str, transport: str = "http") -> int:
    from safetensors.numpy import load_file

    folder = Path(model_dir)
    config = json.loads((folder / "config.json").read_text())
    if config["kind"] != "layer_norm":
        print(f"{folder}: the smoke check knows layer_norm only", file=sys.stderr)
        return 2
    params = load_file(str(folder / "params.safetensors"))
    rng = np.random.default_rng(6)
    x = (3.0 + 2.0 * rng.standard_normal((4, *config["input_shape"]))).astype(np.float32)
    if transport == "grpc":
        name, shape, datatype, got = _grpc_infer(base, folder.name, x)
    else:
        name, shape, datatype, got = _http_infer(base, folder.name, x)
    want = layer_norm_reference(x, config, params)
    err = float(np.max(np.abs(got - want)))
    # float32 kernels against a float64 reference: a few float32 ulps at |y| ~ 1..4.
    ok = name == "output" and datatype == "FP32" and list(shape) == list(want.shape) \
        and err <= 1e-5 * (1.0 + float(np.max(np.abs(want))))
    print(f"{transport} inference {folder.name} {list(x.shape)}: max |error| vs float64 = "
          f"{err:.2e} ({'ok' if ok else 'MISMATCH'})")
    return 0 if ok else 1


def _http_infer(base: str, model: str, x: np.ndarray) -> tuple[str, list, str, np.ndarray]:
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32",
                        "data": x.ravel().tolist()}]}
    req = urllib.request.Request(f"{base}/v2/models/{model}/infer",
                                 data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        out = json.load(r)["outputs"][0]
    return out["name"], out["shape"], out["datatype"], np.asarray(
        out["data"], dtype=np.float64).reshape(out["shape"])


def _grpc_infer(target: str, model: str, x: np.ndarray) -> tuple[str, list, str, np.ndarray]:
    import grpc
    import tritonclient.grpc as grpcclient
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=10)
        if reply.status != health_pb2.HealthCheckResponse.SERVING:
            raise SystemExit(f"gRPC health: {reply.status}, not SERVING")
    client = grpcclient.InferenceServerClient(target)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(model, [inp])
    out = result.get_response().outputs[0]
    return out.name, list(out.shape), out.datatype, result.as_numpy("output").astype(np.float64)


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "ready":
        return wait_ready(argv[1], float(argv[2]))
    if len(argv) == 2 and argv[0] == "status":
        print(status(argv[1]))
        return 0
    if len(argv) == 3 and argv[0] in ("infer", "grpc"):
        return infer(argv[1], argv[2], "grpc" if argv[0] == "grpc" else "http")
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
