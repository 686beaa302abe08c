"""Dynamic batching under real concurrency, the app in this process: every client gets exactly
its own rows back, a full queue answers 503 at once, timeouts and oversized requests behave, a
lone request does not wait for the delay (SIGTERM draining: tests/service/process)."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from service_helpers import (
    assert_matches_reference,
    decode_response,
    in_process,
    infer_binary_body,
    infer_json_body,
    local_layer,
    metric,
    sample_input,
    unique_input,
    wait_for_pending,
)

CLIENTS = 32
REQUESTS = 50
# (model, per-sample shape) pairs the clients rotate through: different models and different
# per-sample shapes of one model (group_norm's free length) share the queues.
TARGETS = [("layer_norm_1024", (1024,)), ("rms_norm_512", (512,)), ("group_norm_8", (8, 3)),
           ("group_norm_8", (8, 5)), ("weight_norm_64x32", (64,))]
DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}




@pytest.mark.anyio
async def test_concurrent_clients_get_their_own_rows(async_app, async_app_client):
    """32 concurrent clients (tasks on the app's own event loop, over httpx's ASGI transport),
    each a connection of its own (its client address), as the batcher tells callers apart.
    Each request first gives the loop a turn, as its trip over a network would: the ASGI
    transport never waits, and a lone caller's request runs at once in its own task, so
    without it each client would run all its requests before the next client starts."""
    layers = {name: local_layer(name) for name, _ in TARGETS}
    failures: list[str] = []

    async def client(c: int) -> int:
        async with httpx.AsyncClient(
                transport=httpx.ASGITransport(async_app, client=("127.0.0.1", 40000 + c)),
                base_url="http://testserver") as http:
            return await requests(c, http)

    async def requests(c: int, http: httpx.AsyncClient) -> int:
        done = 0
        for j in range(REQUESTS):
            await asyncio.sleep(0)
            name, shape = TARGETS[(c + j) % len(TARGETS)]
            datatype = list(DTYPES)[(c * 7 + j) % 3]
            x = unique_input(c, j, shape, DTYPES[datatype])
            if j % 2:
                body, headers = infer_binary_body(x, datatype)
                resp = await http.post(f"/v2/models/{name}/infer", content=body,
                                       headers=headers)
            else:
                resp = await http.post(f"/v2/models/{name}/infer",
                                       json=infer_json_body(x, datatype, id=f"{c}-{j}"))
            if resp.status_code != 200:
                failures.append(f"client {c} request {j}: {resp.status_code} {resp.text}")
                continue
            y = decode_response(resp)
            alone = layers[name].apply(np.ascontiguousarray(x))
            if y.shape != alone.shape or not np.array_equal(y, alone):
                failures.append(f"client {c} request {j}: rows differ from the layer "
                                "applied to this request alone")
                continue
            assert_matches_reference(name, x, y, datatype)
            if j % 2 == 0 and resp.json().get("id") != f"{c}-{j}":
                failures.append(f"client {c} request {j}: wrong id echoed")
            done += 1
        return done

    answered = sum(await asyncio.gather(*(client(c) for c in range(CLIENTS))))
    metrics = (await async_app_client.get("/metrics")).text
    assert not failures, failures[:5]
    assert answered == CLIENTS * REQUESTS
    # Requests were actually joined: fewer kernel runs than requests on the busiest model.
    name = "layer_norm_1024"
    assert metric(metrics, "nv_inference_exec_count", name) < metric(
        metrics, "nv_inference_request_success", name)


@pytest.fixture(scope="module")
def slow_server():
    """Batches wait 30 s to fill (deadline mode); the queue holds one request; 64-row batches."""
    with in_process(batch_wait="deadline", max_queue_size=1, max_queue_delay_us=30_000_000,
                    max_batch_size=64) as app:
        yield app.http



def test_queue_full_timeout_and_oversized_requests(slow_server):
    http = slow_server
    model = "layer_norm_1024"
    held = sample_input(model, 1, "FP32", seed=5)
    body = infer_json_body(held, "FP32", parameters={"timeout": 1_500_000})  # 1.5 s, in us
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(http.post, f"/v2/models/{model}/infer", json=body)
        wait_for_pending(http, model, 1)
        # The queue is full: the next request is refused at once with Retry-After.
        full = http.post(f"/v2/models/{model}/infer", json=infer_json_body(held, "FP32"))
        assert full.status_code == 503
        assert full.headers["retry-after"] == "1"
        assert "queue is full" in full.json()["error"]
        # The held request never filled its batch: its own timeout answers it.
        timed_out = first.result()
    assert timed_out.status_code == 503
    assert "no result within" in timed_out.json()["error"]
    # A request of max_batch_size rows runs at once; a larger one runs alone.
    for rows in (64, 100):
        x = sample_input(model, rows, "FP32", seed=rows)
        payload, headers = infer_binary_body(x, "FP32")
        resp = http.post(f"/v2/models/{model}/infer", content=payload, headers=headers)
        assert resp.status_code == 200, resp.text
        assert_matches_reference(model, x, decode_response(resp), "FP32")
    text = http.get("/metrics").text
    assert metric(text, "nv_inference_request_failure", model, "REJECTED") == 1
    assert metric(text, "nv_inference_request_failure", model, "TIMEOUT") == 1


def test_adaptive_batching_runs_a_lone_request_without_waiting_for_the_delay(app_factory):
    """Adaptive mode (the default) closes a batch once requests stop arriving: with a 60 s
    max_queue_delay, a lone request is still answered (the client gives up after 20 s)."""
    http = app_factory(max_queue_delay_us=60_000_000).http
    model = "layer_norm_1024"
    with ThreadPoolExecutor(1) as pool:
        for seed in range(3):
            x = sample_input(model, 2, "FP32", seed=seed)
            payload, headers = infer_binary_body(x, "FP32")
            resp = pool.submit(http.post, f"/v2/models/{model}/infer", content=payload,
                               headers=headers).result(timeout=20)
            assert resp.status_code == 200, resp.text
            assert_matches_reference(model, x, decode_response(resp), "FP32")
