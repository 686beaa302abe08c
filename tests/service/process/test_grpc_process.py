"""The gRPC transport where the process is the point: SIGTERM drains the RPCs in flight and
the process exits 0; several workers share one gRPC port (SO_REUSEPORT) while a second server
may not."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from service_helpers import local_layer, running_server, sample_input

LN = "layer_norm_1024"


def _input(x: np.ndarray, datatype: str, name: str = "input") -> grpcclient.InferInput:
    inp = grpcclient.InferInput(name, list(x.shape), datatype)
    inp.set_data_from_numpy(x)
    return inp


# --- lifecycle --------------------------------------------------------------------------------
def test_sigterm_drains_grpc_requests_in_flight():
    srv = running_server("--max-queue-delay-us", "200000", "--batch-wait", "deadline")
    server = srv.__enter__()
    try:
        layer = local_layer(LN)
        xs = [sample_input(LN, 1, "FP32", seed=300 + i) for i in range(16)]

        async def main() -> list[np.ndarray]:
            async with aioclient.InferenceServerClient(server.grpc_url) as c:
                async def one(x: np.ndarray) -> np.ndarray:
                    inp = aioclient.InferInput("input", list(x.shape), "FP32")
                    inp.set_data_from_numpy(x)
                    return (await c.infer(LN, [inp])).as_numpy("output")

                tasks = [asyncio.create_task(one(x)) for x in xs]
                await asyncio.sleep(0.1)  # queued: the batch waits up to 200 ms for company
                server.terminate()
                return await asyncio.gather(*tasks)

        for x, y in zip(xs, asyncio.run(main()), strict=True):
            assert y.tobytes() == layer.apply(x).tobytes()
        assert server.proc.wait(60) == 0
    finally:
        srv.__exit__(None, None, None)


def test_workers_share_the_grpc_port():
    with running_server("--workers", "2") as server:
        layer = local_layer(LN)
        for i in range(20):  # fresh channels: the kernel spreads connections across workers
            c = grpcclient.InferenceServerClient(server.grpc_url)
            x = sample_input(LN, 1, "FP32", seed=400 + i)
            assert c.infer(LN, [_input(x, "FP32")]).as_numpy("output").tobytes() == \
                layer.apply(x).tobytes()
            c.close()
        # A second server may not share the port (only one server's workers do).
        with pytest.raises(RuntimeError, match="gRPC: cannot listen on"), \
                running_server("--grpc-port", str(server.grpc_port)):
            pass
