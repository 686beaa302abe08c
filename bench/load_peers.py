"""The peers of the load benchmark: Triton (nvidia-pytriton), KServe's Python ModelServer and
MLServer, each serving the demo model's layer norm (``layer_norm_1024``: input "input", output
"output", 1024 FP32 features, eps 1e-5) in NumPy, one process, on loopback ports the benchmark
chooses.

Each peer's script needs only numpy and its own server package, not normserve: the peers live
in virtualenvs of their own (nvidia-pytriton 0.7 wants numpy<2; mlserver 1.7.1 wants
fastapi<0.116, older than normserve's). ``python -m normserve.bench.load_peers setup DIR``
makes those virtualenvs with pinned versions and prints the ``--peer-python`` arguments of
``python -m normserve.bench.load``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MODEL = "layer_norm_1024"
EPS = 1e-5

# Every script starts with this: argv is http_port grpc_port metrics_port params.npz model.
_HEAD = f"""
import sys
import numpy as np

http_port, grpc_port, metrics_port = (int(a) for a in sys.argv[1:4])
params_path, model_name = sys.argv[4:6]
params = np.load(params_path)
weight, bias, eps = params["weight"], params["bias"], np.float32({EPS!r})
del sys.argv[1:]  # kserve parses the command line when it is imported


def layer_norm(x):
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)
"""

# A NumPy layer norm in Triton's Python backend with dynamic batching like normserve's (max
# batch 256, 500 us queue delay): one model instance, as normserve has one worker.
TRITON_SCRIPT = _HEAD + """
import os, sysconfig
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

# Triton's Python-backend stub links against libpython: point it (a child of tritonserver,
# itself a child of this process) at this interpreter's.
os.environ["LD_LIBRARY_PATH"] = os.pathsep.join(
    p for p in (sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")) if p)


@batch
def infer(**inputs):
    return {"output": layer_norm(inputs["input"])}


config = TritonConfig(http_address="127.0.0.1", http_port=http_port, grpc_address="127.0.0.1",
                      grpc_port=grpc_port, metrics_port=metrics_port, allow_gpu_metrics=False)
# PyTriton puts Triton's shared-memory API behind a generated token: open it (on loopback) for
# the shared-memory cells, keep its other defaults.
security = TritonSecurityConfig(restricted_endpoints=["model-repository", "statistics", "trace",
                                                      "logging"])
with Triton(config=config, security_config=security) as triton:
    triton.bind(model_name=model_name, infer_func=infer,
                inputs=[Tensor(name="input", dtype=np.float32, shape=(1024,))],
                outputs=[Tensor(name="output", dtype=np.float32, shape=(1024,))],
                config=ModelConfig(max_batch_size=256,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=500)))
    triton.serve()
"""

# KServe's Python ModelServer, one worker, v2 over REST and gRPC. It has no batcher of its own
# (KServe's batcher is a sidecar of the Kubernetes deployment), so each request is one predict.
KSERVE_SCRIPT = _HEAD + """
import logging
import grpc.aio
import kserve
from kserve.protocol.rest.server import RESTServer

# ModelServer binds REST to 0.0.0.0 and gRPC to [::] with no option to change it: loopback.
_rest_init = RESTServer.__init__


def _rest_on_loopback(self, *args, **kwargs):
    _rest_init(self, *args, **kwargs)
    self.config.host = "127.0.0.1"


_aio_server = grpc.aio.server


def _grpc_on_loopback(*args, **kwargs):
    server = _aio_server(*args, **kwargs)
    add_port = server.add_insecure_port
    server.add_insecure_port = lambda address: add_port(address.replace("[::]", "127.0.0.1"))
    return server


RESTServer.__init__ = _rest_on_loopback
grpc.aio.server = _grpc_on_loopback


class LayerNorm(kserve.Model):
    def __init__(self):
        super().__init__(model_name)
        self.ready = True

    def predict(self, payload, headers=None):
        # Binary out when the request asks for it (HTTP binary_data_output, raw gRPC input).
        binary = payload.use_binary_outputs
        y = layer_norm(payload.inputs[0].as_numpy())
        output = kserve.InferOutput("output", list(y.shape), "FP32")
        output.set_data_from_numpy(y, binary_data=binary)
        return kserve.InferResponse(payload.id or "", model_name, [output],
                                    use_binary_outputs=binary)


server = kserve.ModelServer(http_port=http_port, grpc_port=grpc_port, workers=1,
                            enable_latency_logging=False, grace_period=1)
for name in ("kserve", "kserve.trace", "uvicorn", "uvicorn.error", "uvicorn.access"):
    logging.getLogger(name).setLevel(logging.WARNING)
server.start([LayerNorm()])
"""

# MLServer with a custom runtime, in-process inference (parallel_workers 0: one process, like
# normserve's one worker) and adaptive batching like Triton's (256 requests, 500 us).
MLSERVER_SCRIPT = _HEAD + """
import asyncio, os
from mlserver import MLModel, MLServer
from mlserver.codecs import NumpyCodec
from mlserver.settings import ModelSettings, Settings
from mlserver.types import InferenceResponse
from prometheus_client import Counter

# MLServer counts requests; this counts predict calls (batches), for the mean batch size.
batches = Counter("nv_inference_exec_count", "predict calls", ["model"]).labels(model_name)


class LayerNorm(MLModel):
    async def load(self):
        return True

    async def predict(self, payload):
        batches.inc()
        y = layer_norm(NumpyCodec.decode_input(payload.inputs[0]))
        return InferenceResponse(model_name=self.name,
                                 outputs=[NumpyCodec.encode_output("output", y)])


async def main():
    settings = Settings(host="127.0.0.1", http_port=http_port, grpc_port=grpc_port,
                        metrics_port=metrics_port, parallel_workers=0, debug=False,
                        model_repository_root=os.path.dirname(params_path))
    model = ModelSettings(name=model_name, implementation=LayerNorm, max_batch_size=256,
                          max_batch_time=0.0005)
    await MLServer(settings).start([model])


asyncio.run(main())
"""

_NO_SHM = "no system shared-memory extension"
#: perf_analyzer reads Triton's model configuration first (gRPC ModelConfig, HTTP
#: /v2/models/NAME/config), which KServe's v2 protocol has not (nor ModelStreamInfer).
_NO_PA = {m: "no Triton model configuration (ModelConfig), which perf_analyzer reads first"
          for m in ("pa-http", "pa-grpc", "pa-grpc-stream", "pa-shm")}


@dataclass(frozen=True)
class Peer:
    """A peer server: how to install it, start it, and what it serves."""

    module: str  # what its interpreter must import
    dist: str  # the distribution whose version labels its rows
    label: str  # the table's server column, with {version}
    pins: tuple[str, ...]  # what `setup` installs
    script: str
    batching: str  # the table's batching column: whether the peer batches requests itself
    counts_batches: bool  # its metrics carry request and batch counts
    unsupported: dict[str, str] = field(default_factory=dict)  # loadbench mode -> why not

    def command(self, python: str, http: int, grpc: int, metrics: int, params: str
                ) -> list[str]:
        return [python, "-c", self.script, str(http), str(grpc), str(metrics), params, MODEL]


PEERS = {
    "triton": Peer("pytriton", "nvidia-pytriton", "triton (pytriton {version})",
                   ("nvidia-pytriton==0.7.0", "numpy<2"), TRITON_SCRIPT, "on", True),
    "kserve": Peer("kserve", "kserve", "kserve {version}", ("kserve==0.21.0",),
                   KSERVE_SCRIPT, "off", False,
                   {"shm-grpc": _NO_SHM, "shm-http": _NO_SHM, **_NO_PA}),
    "mlserver": Peer("mlserver", "mlserver", "mlserver {version}",
                     ("mlserver==1.7.1",), MLSERVER_SCRIPT, "on", True,
                     {"http-binary": "no binary tensor extension over HTTP (a binary request "
                                     "gets 500)", "shm-grpc": _NO_SHM, "shm-http": _NO_SHM}),
}


class PeerMissing(Exception):
    """The peer cannot run with the interpreter given; the message says why."""


def installed(name: str, python: str | None = None) -> str:
    """The version of peer ``name``'s package that ``python`` (default: this interpreter)
    imports; raises PeerMissing saying why not."""
    peer = PEERS[name]
    hint = (f"pip install {' '.join(peer.pins)}, best in a virtualenv of its own: "
            "python -m normserve.bench.load_peers setup DIR")
    # abspath, not realpath: every venv's python is a symlink to the same base interpreter.
    if python is None or os.path.abspath(python) == os.path.abspath(sys.executable):
        if importlib.util.find_spec(peer.module) is None:
            raise PeerMissing(f"{peer.dist} is not installed in this interpreter ({hint})")
        return importlib.metadata.version(peer.dist)
    probe = f"import {peer.module}, importlib.metadata as m; print(m.version({peer.dist!r}))"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerMissing(f"--peer-python {name}={python}: cannot run it ({exc})") from None
    if done.returncode:
        raise PeerMissing(f"--peer-python {name}={python}: cannot import {peer.module} ({hint})")
    return done.stdout.strip()


def params() -> tuple[np.ndarray, np.ndarray]:
    """The demo model's weight and bias."""
    from safetensors.numpy import load_file

    from normserve.service.models.registry import DEMO_REPOSITORY

    tensors = load_file(str(Path(DEMO_REPOSITORY) / MODEL / "params.safetensors"))
    return tensors["weight"], tensors["bias"]


def write_params(folder: str) -> str:
    """The demo model's weight and bias as an .npz the peer scripts load."""
    weight, bias = params()
    path = os.path.join(folder, "params.npz")
    np.savez(path, weight=weight, bias=bias)
    return path


def reference(x: np.ndarray) -> np.ndarray:
    """The demo model's layer norm in float64: what every peer's answer is checked against."""
    weight, bias = params()
    x = x.astype(np.float64)
    mean = x.mean(axis=-1, keepdims=True)
    var = x.var(axis=-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + EPS) * weight + bias).astype(np.float32)


def setup(folder: Path, names: list[str]) -> list[str]:
    """One virtualenv per peer under ``folder`` with the pinned versions; the
    ``--peer-python`` arguments that use them."""
    args = []
    for name in names:
        venv = folder / name
        python = str(venv / "bin" / "python")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", *PEERS[name].pins],
                       check=True)
        print(f"{name}: {PEERS[name].dist} {installed(name, python)} in {venv}", flush=True)
        args += ["--peer-python", f"{name}={python}"]
    return args


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m normserve.bench.load_peers",
                                description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    make = sub.add_parser("setup", help="make one virtualenv per peer, pinned versions")
    make.add_argument("folder", type=Path)
    make.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS))
    args = p.parse_args(argv)
    peer_args = setup(args.folder.absolute(), args.peers)
    print("\npython -m normserve.bench.load --peers", " ".join(args.peers),
          " ".join(peer_args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
