"""The gRPC server's life: started in the app's lifespan on uvicorn's event loop (so its
requests join the same batchers as HTTP's), stopped with a grace period on shutdown.

It serves the inference service and ``grpc.health.v1`` (for Kubernetes gRPC probes: the
overall service and ``inference.GRPCInferenceService`` are SERVING once every model is warm,
NOT_SERVING while draining). Messages are limited to ``--max-body-bytes`` both ways.
With ``--workers N`` every worker binds the same port with SO_REUSEPORT and the kernel spreads
connections across them, as uvicorn's shared socket spreads HTTP's; a single worker binds it
exclusively, so a second server on the same port fails to start rather than share it.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from ..core.dataplane import DataPlane
from .servicer import Servicer

SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class GrpcServer:
    """One ``grpc.aio`` server over a data plane."""

    def __init__(self, dataplane: DataPlane, host: str, port: int) -> None:
        settings = dataplane.ctx.settings
        limit = settings.max_body_bytes
        self.server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),
            # Connections (tested in tests/service/process/test_connections.py). Past
            # max_connections open connections grpc core closes a new one at once (the
            # client: UNAVAILABLE); a connection that has not completed its HTTP/2 handshake
            # (preface and SETTINGS) within request_header_timeout is closed; one that
            # carries no RPC for grpc_idle_timeout gets a GOAWAY and is closed (clients
            # reconnect on their next call). Past grpc_max_concurrent_rpcs RPCs in progress
            # (a stalled one, whose request message never completes, holds its place too) a
            # new RPC gets RESOURCE_EXHAUSTED. All per worker process, as HTTP's bound.
            ("grpc.max_allowed_incoming_connections", settings.max_connections),
            ("grpc.server_handshake_timeout_ms",
             max(1, round(settings.request_header_timeout * 1000))),
            ("grpc.max_connection_idle_ms", max(1, round(settings.grpc_idle_timeout * 1000))),
        ], maximum_concurrent_rpcs=settings.grpc_max_concurrent_rpcs)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Servicer(dataplane),
                                                                     self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError:  # grpc's "Failed to bind": say what to do about it
            self.port = 0
        if not self.port:
            raise OSError(f"gRPC: cannot listen on {address} (in use, or not allowed): pick "
                          "another --grpc-port, or 0 for no gRPC")

    async def start(self) -> None:
        await self.set_serving(False)
        await self.server.start()

    async def set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def drain(self) -> None:
        """Health says NOT_SERVING from now on (the server is going away)."""
        await self.health.enter_graceful_shutdown()

    async def stop(self, grace_s: float) -> None:
        """Refuse new RPCs, let running ones finish within ``grace_s``, then close."""
        await self.drain()
        await self.server.stop(grace_s)
