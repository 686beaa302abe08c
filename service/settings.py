"""Server settings: limits and switches shared by the CLI, the app factory and its workers.

With ``--workers N`` uvicorn imports the app in each worker process, so the settings travel
through one environment variable as JSON.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

import orjson

ENV_VAR = "NORMSERVE_SETTINGS"
#: How the server's own log lines look (the CLI's process and each spawned worker).
LOG_FORMAT = "%(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class Settings:
    """What one server process needs to know; defaults suit a laptop."""

    model_repository: str | None = None  # None: the built-in demo repository
    device: str = "cpu"
    admin_token: str | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    max_tensor_elements: int = 16 * 1024 * 1024
    max_rank: int = 8
    request_timeout: float = 30.0  # seconds a request may wait for its result
    # Connections (per server process; see http/connections.py and grpc/server.py):
    request_header_timeout: float = 10.0  # seconds for a request line + headers (HTTP), and
    #   for a gRPC connection's HTTP/2 handshake; an HTTP body then has request_timeout
    max_connections: int = 4096  # open connections per transport; past it: 503 / closed
    grpc_max_concurrent_rpcs: int = 4096  # RPCs in progress; past it: RESOURCE_EXHAUSTED
    grpc_idle_timeout: float = 300.0  # seconds a gRPC connection may carry no RPC (GOAWAY)
    batching: bool = True  # False: every request runs alone (for comparisons)
    # "adaptive": close a batch as soon as requests stop arriving and no client is expected
    # back before its deadline (max_queue_delay_us is the cap); "deadline": always wait
    # max_queue_delay_us for a fuller batch (Triton's way).
    batch_wait: str = "adaptive"
    max_batch_size: int | None = None  # overrides every model's max_batch_size when set
    max_queue_delay_us: int | None = None  # overrides every model's setting when set
    max_queue_size: int | None = None  # overrides every model's setting when set
    workers: int = 1
    warmup: bool = True
    # Work (elements; multiply-adds for the linear layers) from which a kernel runs on every
    # core: below it, serial (kernels.cpu_jit.set_parallel_min_work says why).
    parallel_min_work: int = 1 << 20
    host: str = "127.0.0.1"  # the address both transports listen on
    grpc_port: int = 8001  # 0: no gRPC
    allow_shared_memory: bool = False  # Triton's system shared memory extension
    # Triton's model control: "none" (load all at start), "poll" (rescan the repository every
    # repository_poll_secs), "explicit" (load load_models at start, then what the repository
    # API asks).
    model_control_mode: str = "none"
    repository_poll_secs: float = 15.0
    load_models: tuple[str, ...] = ()
    # With --workers N: the folder the parent process made for its workers to agree in
    # (models.cluster); None with one worker.
    runtime_dir: str | None = None
    # The "normserve" loggers' level (--log-level): spawned workers set their logging up anew.
    log_level: str = "info"

    def to_env(self) -> str:
        return orjson.dumps(asdict(self)).decode()

    @classmethod
    def from_env(cls) -> Settings:
        raw = os.environ.get(ENV_VAR)
        if not raw:
            return cls()
        data = orjson.loads(raw)
        known = {f.name for f in fields(cls)}
        if "load_models" in data:
            data["load_models"] = tuple(data["load_models"])
        return cls(**{k: v for k, v in data.items() if k in known})
