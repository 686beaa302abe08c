"""Shared helpers of the service tests: the app in this process (``in_process``: Starlette's
TestClient, the app's lifespan run, and gRPC on a free loopback port when asked;
``in_thread``: uvicorn serving it on a loopback socket from a thread, for clients that need a
socket), a real normserve server in a subprocess on a free loopback port (``running_server``:
only where the process is the point), infer request builders, the demo models' parameters,
and float64 reference outputs (the oracle)."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from google.protobuf import json_format
from safetensors.numpy import load_file
from tritonclient.grpc import model_config_pb2

from normserve.kernels.dtypes import DATATYPES
from normserve.kernels.oracle import reference, tolerance
from normserve.repository import load_model
from normserve.service.app import create_app
from normserve.service.demo import demo_models
from normserve.service.settings import Settings

with warnings.catch_warnings():  # Starlette's advice to install httpx2: the client is httpx's
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "service" / "demo_repository"
START_TIMEOUT_S = 300  # a cold Numba cache compiles every kernel at start-up

# Per-sample shapes used to test each demo model (its -1 dims made concrete).
SAMPLE_SHAPES: dict[str, tuple[int, ...]] = {
    "batch_norm_8": (8, 5),
    "layer_norm_1024": (1024,),
    "rms_norm_512": (512,),
    "instance_norm_4": (4, 6),
    "group_norm_8": (8, 3),
    "weight_norm_64x32": (64,),
    "spectral_norm_64x32": (64,),
    "gemma_rms_norm_256": (256,),
}
#: Every model of the demo repository: those above (one input each) and the fused models of
#: two inputs (service_fused_cases.FUSED).
DEMO_MODELS = sorted(p.name for p in DEMO.iterdir() if (p / "config.json").is_file())
#: The one allowance past ``kernels.oracle``'s SPEC tolerances: test_service_batching's
#: concurrency inputs are far wider than SPEC-scale data (N(0, 1) scaled up to 33x, offset up
#: to 49), and on them an FP32 GEMM rounds to ~1.5e-5 of weight_norm's small outputs. FP32
#: results on the wire are bitwise the kernel's (that test checks it), so this loosens nothing
#: about the service; it is the 1e-4 the service tests have always used for FP32.
FP32_WIDE_INPUT_TOLERANCE = (1e-4, 1e-4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``normserve serve`` as a subprocess; ``url`` once ready, ``stop()`` sends SIGTERM."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Every server gets its own gRPC port (the default 8001 would clash between tests).
        if "--grpc-port" not in args:
            args = ("--grpc-port", str(free_port()), *args)
        self.grpc_port = int(args[args.index("--grpc-port") + 1])
        # One worker unless a test asks: most check one process's behaviour (per-worker bounds,
        # signals); the default, --workers auto, has its own tests (test_workers_auto.py).
        if "--workers" not in args:
            args = ("--workers", "1", *args)
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        # Closed in stop(); a file (not a pipe) so that a chatty server never blocks on it.
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115
            "w+", prefix="normserve-", suffix=".log")
        cmd = [sys.executable, "-m", "normserve.cli", "serve", "--port", str(self.port),
               *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})

    @functools.cached_property
    def http(self) -> httpx.Client:
        """A client of this server (closed in stop())."""
        return httpx.Client(base_url=self.url, timeout=120)

    def wait_ready(self) -> Server:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {START_TIMEOUT_S} s:\n{self.output()}")

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 60) -> int:
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
        finally:
            self.log.close()
            if "http" in self.__dict__:
                self.http.close()


@contextlib.contextmanager
def cli_log_level() -> Iterator[None]:
    """The log levels as ``normserve serve`` sets them (INFO; the logging extension reports
    and changes them), restored afterwards."""
    names = ("", "normserve", "uvicorn", "uvicorn.access", "uvicorn.error")
    levels = {name: logging.getLogger(name).level for name in names}
    logging.getLogger("normserve").setLevel(logging.INFO)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


class InProcess:
    """The app of ``create_app(settings)`` in this process, its lifespan entered: ``http`` is
    a TestClient (an ``httpx.Client``: requests go straight to the ASGI app), ``grpc_url`` the
    gRPC server the lifespan started on a free loopback port (None without gRPC)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self.http = TestClient(self.app)
        self.grpc_url = f"127.0.0.1:{settings.grpc_port}" if settings.grpc_port else None

    @property
    def ctx(self) -> Any:
        """The running app's Context (registry, metrics, settings)."""
        return self.app.state.ctx

    def wait_ready(self) -> InProcess:
        deadline = time.monotonic() + START_TIMEOUT_S
        while self.http.get("/v2/health/ready").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"app not ready in {START_TIMEOUT_S} s")
            time.sleep(0.02)
        return self


@contextlib.contextmanager
def in_process(*, grpc: bool = False, **settings: Any) -> Iterator[InProcess]:
    """The app, ready (every model warm), for these Settings fields; gRPC off unless asked."""
    settings.setdefault("grpc_port", free_port() if grpc else 0)
    app = InProcess(Settings(**settings))
    # The TestClient runs the lifespan in its event-loop thread until closed.
    with cli_log_level(), app.http:
        yield app.wait_ready()


class InThread:
    """The app served by uvicorn on a free loopback port from a thread of this process: a
    real socket for the clients that need one (tritonclient.http, gevent underneath), with
    no process to start. ``url`` and ``grpc_url`` as ``Server``'s."""

    def __init__(self, settings: Settings) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.grpc_url = f"127.0.0.1:{settings.grpc_port}" if settings.grpc_port else None
        self.app = create_app(settings)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def ctx(self) -> Any:
        return self.app.state.ctx

    def alive(self) -> bool:
        return self.thread.is_alive() and httpx.get(f"{self.url}/v2/health/live").is_success


@contextlib.contextmanager
def in_thread(*, grpc: bool = False, **settings: Any) -> Iterator[InThread]:
    """The app served from a thread on a real socket, ready; gRPC off unless asked."""
    settings.setdefault("grpc_port", free_port() if grpc else 0)
    served = InThread(Settings(**settings))
    with contextlib.ExitStack() as stack:
        stack.enter_context(cli_log_level())
        stack.enter_context(_stopping(served))
        served.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not served.thread.is_alive():
                raise RuntimeError("the server thread ended at start-up")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{served.url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"not ready in {START_TIMEOUT_S} s")
            time.sleep(0.02)
        yield served


@contextlib.contextmanager
def _stopping(served: InThread) -> Iterator[None]:
    try:
        yield
    finally:
        served.server.should_exit = True
        served.thread.join(60)


@contextlib.contextmanager
def running_server(*args: str, env: dict[str, str] | None = None) -> Iterator[Server]:
    server = Server(*args, env=env)
    try:
        yield server.wait_ready()
    finally:
        if server.proc.poll() is None:
            server.stop()


def check_triton_config(config: dict[str, Any], name: str) -> Any:
    """A model configuration in Triton's schema (parsed strictly into its ModelConfig
    message: an unknown field fails) that says what the demo model ``name`` is."""
    parsed = json_format.ParseDict(config, model_config_pb2.ModelConfig())
    demo = demo_config(name)
    assert parsed.name == name and parsed.backend == "normserve"
    assert parsed.parameters["kind"].string_value == demo["kind"]
    assert parsed.max_batch_size == demo["max_batch_size"]
    assert list(parsed.input[0].dims) == demo["input_shape"]  # -1: a free dimension
    assert parsed.input[0].data_type == model_config_pb2.TYPE_FP32
    assert parsed.output[0].name == "output"
    batching = parsed.dynamic_batching
    assert batching.max_queue_delay_microseconds == demo.get("max_queue_delay_us", 500)
    return parsed


def demo_params(name: str) -> dict[str, np.ndarray]:
    """A demo model's state dict as shipped in the package."""
    return dict(load_file(str(DEMO / name / "params.safetensors")))


def demo_config(name: str) -> dict[str, Any]:
    return demo_models()[name][0]


def local_layer(name: str) -> Any:
    """The demo model's prepared layer in this process (for bitwise comparisons)."""
    return load_model(DEMO / name)[1]


def reference_output(name: str, x: np.ndarray) -> np.ndarray:
    """float64 reference output of a demo model for ``x`` (``x`` in its wire dtype)."""
    config = demo_config(name)
    return reference(config["kind"], x, demo_params(name), config)


def sample_input(name: str, rows: int, datatype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, *SAMPLE_SHAPES[name])) * 2 + 0.5
    return x.astype(DATATYPES[datatype])


def assert_matches_reference(name: str, x: np.ndarray, y: np.ndarray, datatype: str) -> None:
    """``y`` has x's dtype and agrees with the float64 reference within the SPEC tolerance."""
    assert y.dtype == x.dtype
    expected = reference_output(name, x)
    assert y.shape == expected.shape
    atol, rtol = (FP32_WIDE_INPUT_TOLERANCE if datatype == "FP32"
                  else tolerance(DATATYPES[datatype]))
    np.testing.assert_allclose(y.astype(np.float64), expected, rtol=rtol, atol=atol,
                               err_msg=f"{name} {datatype}")


def infer_json_body(x: np.ndarray, datatype: str, **extra: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": datatype,
                        "data": x.astype(np.float64).ravel().tolist()}], **extra}


def infer_binary_body(x: np.ndarray, datatype: str,
                      binary_output: bool = True) -> tuple[bytes, dict[str, str]]:
    """A hand-built binary-extension request (what tritonclient sends)."""
    import orjson

    raw = np.ascontiguousarray(x).tobytes()
    head = orjson.dumps({"inputs": [{"name": "input", "shape": list(x.shape),
                                     "datatype": datatype,
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "output",
                                      "parameters": {"binary_data": binary_output}}]})
    return head + raw, {"Inference-Header-Content-Length": str(len(head))}


def decode_response(resp: httpx.Response) -> np.ndarray:
    """The ``output`` tensor of an infer response, JSON or binary."""
    n = resp.headers.get("inference-header-content-length")
    import orjson

    if n is None:
        out = resp.json()["outputs"][0]
        return np.asarray(out["data"], dtype=DATATYPES[out["datatype"]]).reshape(out["shape"])
    head = orjson.loads(resp.content[:int(n)])
    out = head["outputs"][0]
    return np.frombuffer(resp.content[int(n):], dtype=DATATYPES[out["datatype"]]).reshape(
        out["shape"])


def metric(text: str, name: str, model: str, extra: str = "") -> float:
    """The value of Prometheus sample ``name`` for ``model`` (and ``extra``) in ``text``."""
    for line in text.splitlines():
        if line.startswith(name) and f'model="{model}"' in line and extra in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for_pending(http: httpx.Client, model: str, count: int) -> None:
    """Until ``model`` has ``count`` requests queued (its pending-request gauge)."""
    for _ in range(600):
        if metric(http.get("/metrics").text, "nv_inference_pending_request_count",
                  model) == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{model} never had {count} queued request(s)")


def unique_input(client: int, j: int, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Request ``j`` of client ``client``: 1-3 rows no other request carries."""
    rows = 1 + (client + j) % 3
    rng = np.random.default_rng(client * 1000 + j)
    x = rng.standard_normal((rows, *shape)) * (1 + client) + j
    x.flat[0] = client * 1000 + j  # no two requests carry the same first value
    return x.astype(dtype)


@contextlib.contextmanager
def clients_running(client: Callable[[int], None], count: int,
                    stop: threading.Event) -> Iterator[None]:
    """``count`` threads running ``client(k)`` (each until ``stop`` is set) for the block;
    then ``stop`` is set and every thread joined."""
    threads = [threading.Thread(target=client, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    try:
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(60)
