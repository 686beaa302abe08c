"""``normserve serve``: parse the options and run uvicorn (SPEC 5).

Without ``--model-repository`` the built-in demo repository (one model of each kind) is served.
uvicorn handles SIGTERM gracefully: it stops accepting, lets running requests finish, then
the app's lifespan drains the batch queues.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from .core.metrics import MULTIPROC_DIR_ENV
from .cpus import Plan, plan_workers, usable_cpus
from .settings import ENV_VAR, LOG_FORMAT, Settings

log = logging.getLogger("normserve")


def _positive(kind: type) -> object:
    def parse(text: str) -> object:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def _workers(text: str) -> int | None:
    """``auto`` (None) or a number of workers."""
    return None if text == "auto" else _positive(int)(text)  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="normserve serve",
                                description="Serve normalisation layers over KServe v2.")
    p.add_argument("--model-repository", metavar="DIR",
                   help="model repository (default: the built-in demo repository)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--grpc-port", type=int, default=8001,
                   help="gRPC port (Triton's GRPCInferenceService and grpc.health.v1); 0: off")
    p.add_argument("--workers", type=_workers, default=None, metavar="N|auto",
                   help="server processes (each batches on its own); auto (the default): one "
                        "per CPU this process may use (affinity, cgroup CPU quota, "
                        "$NORMSERVE_CPUS), at most 16 and half the memory limit at ~340 MB "
                        "each, one with --allow-shared-memory; kernel threads split so that "
                        "workers x threads never exceed the CPUs")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    p.add_argument("--admin-token", default=os.environ.get("NORMSERVE_ADMIN_TOKEN"),
                   help="token for PUT/DELETE /v1/models (default: $NORMSERVE_ADMIN_TOKEN; "
                        "none: registration is off)")
    p.add_argument("--max-body-bytes", type=_positive(int), default=64 * 1024 * 1024)
    p.add_argument("--max-tensor-elements", type=_positive(int), default=16 * 1024 * 1024)
    p.add_argument("--request-timeout", type=_positive(float), default=30.0,
                   help="seconds a request may take, queueing included")
    p.add_argument("--request-header-timeout", type=_positive(float), default=10.0, metavar="S",
                   help="HTTP: seconds a connection has to deliver a request's line and headers "
                        "(from its opening, or from the first byte of a later request); the "
                        "body then has --request-timeout; past either: 408 (or, if nothing "
                        "came, a close). gRPC: seconds for a connection's HTTP/2 handshake")
    p.add_argument("--max-connections", type=_positive(int), default=4096, metavar="N",
                   help="open connections per worker process, for each transport; past it a "
                        "new HTTP connection gets 503 with Retry-After, a new gRPC connection "
                        "is closed")
    p.add_argument("--grpc-max-concurrent-rpcs", type=_positive(int), default=4096, metavar="N",
                   help="gRPC RPCs in progress per worker process; past it: RESOURCE_EXHAUSTED")
    p.add_argument("--grpc-idle-timeout", type=_positive(float), default=300.0, metavar="S",
                   help="seconds a gRPC connection may go without an RPC before the server "
                        "closes it (GOAWAY; clients reconnect when they next call)")
    p.add_argument("--batch-wait", choices=["adaptive", "deadline"], default="adaptive",
                   help="adaptive: run a batch once requests stop arriving and no client "
                        "is expected back before its deadline, waiting at most "
                        "max_queue_delay_us; deadline: always wait max_queue_delay_us")
    p.add_argument("--no-batching", action="store_true",
                   help="run every request alone (for comparisons)")
    p.add_argument("--max-batch-size", type=_positive(int),
                   help="override every model's max_batch_size")
    p.add_argument("--max-queue-delay-us", type=int,
                   help="override every model's max_queue_delay_us")
    p.add_argument("--max-queue-size", type=_positive(int),
                   help="override every model's max_queue_size")
    p.add_argument("--allow-shared-memory", action="store_true",
                   help="serve Triton's system shared memory extension: clients on this host "
                        "may then have the server map POSIX shared-memory objects they name "
                        "(off by default: a remote client must not choose what is mapped)")
    p.add_argument("--model-control-mode", choices=("none", "poll", "explicit"), default="none",
                   help="none: load every model at start; poll: also rescan the repository "
                        "every --repository-poll-secs (added, changed and removed folders are "
                        "loaded, reloaded, unloaded); explicit: load only --load-model names, "
                        "then what the repository API asks")
    p.add_argument("--repository-poll-secs", type=_positive(float), default=15.0, metavar="S")
    p.add_argument("--load-model", action="append", default=[], metavar="NAME",
                   help="with --model-control-mode explicit: a model to load at start "
                        "(repeatable; '*' loads them all)")
    p.add_argument("--parallel-min-work", type=_positive(int),
                   default=Settings.parallel_min_work, metavar="N",
                   help="elements (multiply-adds for the linear layers) from which a batch's "
                        "kernel runs threaded; smaller ones run serial, which under load is "
                        "faster than waking threads on cores busy with requests")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip compiling kernels at start (first requests pay for it)")
    p.add_argument("--log-level", default="info",
                   choices=("critical", "error", "warning", "info", "debug"))
    p.add_argument("--access-log", action="store_true", help="log every request")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        model_repository=str(Path(args.model_repository).resolve()) if args.model_repository
        else None,
        device=args.device, admin_token=args.admin_token or None,
        max_body_bytes=args.max_body_bytes, max_tensor_elements=args.max_tensor_elements,
        request_timeout=args.request_timeout, batching=not args.no_batching,
        request_header_timeout=args.request_header_timeout,
        max_connections=args.max_connections,
        grpc_max_concurrent_rpcs=args.grpc_max_concurrent_rpcs,
        grpc_idle_timeout=args.grpc_idle_timeout,
        batch_wait=args.batch_wait,
        max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
        max_queue_size=args.max_queue_size, workers=args.workers, warmup=not args.no_warmup,
        parallel_min_work=args.parallel_min_work,
        host=args.host, grpc_port=args.grpc_port, allow_shared_memory=args.allow_shared_memory,
        model_control_mode=args.model_control_mode,
        repository_poll_secs=args.repository_poll_secs, load_models=tuple(args.load_model),
        log_level=args.log_level)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.model_repository and not Path(args.model_repository).is_dir():
        print(f"normserve serve: --model-repository {args.model_repository}: not a directory",
              file=sys.stderr)
        return 2
    if args.allow_shared_memory and (args.workers or 1) > 1:
        print("normserve serve: --allow-shared-memory needs --workers 1 (regions are registered "
              "in one process)", file=sys.stderr)
        return 2
    if args.load_model and args.model_control_mode != "explicit":
        print("normserve serve: --load-model needs --model-control-mode explicit",
              file=sys.stderr)
        return 2
    if not 0 <= args.grpc_port <= 65535:
        print("normserve serve: --grpc-port: must be a port number, or 0 for no gRPC",
              file=sys.stderr)
        return 2
    if args.max_queue_delay_us is not None and args.max_queue_delay_us < 0:
        print("normserve serve: --max-queue-delay-us: must be >= 0", file=sys.stderr)
        return 2
    if args.device != "cpu":
        from normserve.kernels.devices import resolve_device

        try:
            resolve_device(args.device)
        except ValueError as exc:
            print(f"normserve serve: --device: {exc}", file=sys.stderr)
            return 2
    try:
        plan = _plan(args)
    except ValueError as exc:
        print(f"normserve serve: {exc}", file=sys.stderr)
        return 2
    args.workers = plan.workers
    settings = settings_from(args)
    runtime_dir = None
    if args.workers > 1:  # where the workers agree on what they serve (models.cluster)
        runtime_dir = tempfile.mkdtemp(prefix="normserve-workers-")
        settings = dataclasses.replace(settings, runtime_dir=runtime_dir)
        # Metrics summed over the workers (core.metrics): set before they start.
        os.environ[MULTIPROC_DIR_ENV] = os.path.join(runtime_dir, "metrics")
        os.mkdir(os.environ[MULTIPROC_DIR_ENV])
    os.environ[ENV_VAR] = settings.to_env()
    _set_kernel_threads(plan.threads)
    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    log.info("%d worker(s) x %d kernel thread(s): %s", plan.workers, plan.threads, plan.why)

    # uvicorn re-raises a captured SIGTERM once its graceful shutdown is done; the handler in
    # place then is this one, so a drained server exits 0 rather than dying of the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        _run_uvicorn(args)
    finally:
        if runtime_dir is not None:
            shutil.rmtree(runtime_dir, ignore_errors=True)
    return 0


def _plan(args: argparse.Namespace) -> Plan:
    """How many workers (``--workers``, or auto) and kernel threads each."""
    user_threads = os.environ.get("NUMBA_NUM_THREADS", "")
    if user_threads and (not user_threads.isdigit() or int(user_threads) < 1):
        raise ValueError(f"NUMBA_NUM_THREADS: must be a whole number >= 1, got {user_threads!r}")
    try:
        tempfile.gettempdir()  # where several workers agree (models.cluster)
        scratch = True
    except OSError:  # a read-only filesystem, no tmpfs anywhere
        scratch = False
    if not scratch and (args.workers or 1) > 1:
        raise ValueError(f"--workers {args.workers} needs a writable temporary directory "
                         "($TMPDIR, /tmp) for the workers to agree in")
    return plan_workers(args.workers, usable_cpus(),
                        allow_shared_memory=args.allow_shared_memory,
                        user_threads=int(user_threads) if user_threads else None,
                        scratch=scratch)


def _set_kernel_threads(threads: int) -> None:
    """Each worker's Numba pool: spawned workers read ``NUMBA_NUM_THREADS`` when they import
    Numba; this process (the one worker of ``--workers 1``) imported it already, so its pool
    is sized before it starts (Numba reads the number once, at import)."""
    os.environ["NUMBA_NUM_THREADS"] = str(threads)
    import numba
    from numba.np.ufunc import parallel

    if not parallel._is_initialized:
        numba.config.NUMBA_NUM_THREADS = threads
        parallel.NUM_THREADS = threads


def _run_uvicorn(args: argparse.Namespace) -> None:
    import uvicorn

    uvicorn.run("normserve.service.app:create_app_from_env", factory=True, host=args.host,
                port=args.port, workers=args.workers, log_level=args.log_level,
                access_log=args.access_log, timeout_graceful_shutdown=None,
                # request deadlines and a bound on connections (http/connections.py)
                http="normserve.service.http.connections:HttpProtocol",
                server_header=False)


if __name__ == "__main__":
    sys.exit(main())
