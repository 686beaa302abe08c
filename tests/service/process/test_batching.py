"""Dynamic batching under real concurrency: every client gets exactly its own rows back, a full
queue answers 503 at once, timeouts and oversized requests behave, SIGTERM drains."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import pytest
from service_helpers import (
    Server,
    assert_matches_reference,
    decode_response,
    infer_binary_body,
    infer_json_body,
    local_layer,
    running_server,
    sample_input,
)

CLIENTS = 32
REQUESTS = 50
# (model, per-sample shape) pairs the clients rotate through: different models and different
# per-sample shapes of one model (group_norm's free length) share the queues.
TARGETS = [("layer_norm_1024", (1024,)), ("rms_norm_512", (512,)), ("group_norm_8", (8, 3)),
           ("group_norm_8", (8, 5)), ("weight_norm_64x32", (64,))]
DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}


def _metric(text: str, name: str, model: str, extra: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name) and f'model="{model}"' in line and extra in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _unique_input(client: int, j: int, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    rows = 1 + (client + j) % 3
    rng = np.random.default_rng(client * 1000 + j)
    x = rng.standard_normal((rows, *shape)) * (1 + client) + j
    x.flat[0] = client * 1000 + j  # no two requests carry the same first value
    return x.astype(dtype)


def test_concurrent_clients_get_their_own_rows():
    layers = {name: local_layer(name) for name, _ in TARGETS}
    failures: list[str] = []
    with running_server() as server:

        def client(c: int) -> int:
            done = 0
            with httpx.Client(base_url=server.url, timeout=60) as http:
                for j in range(REQUESTS):
                    name, shape = TARGETS[(c + j) % len(TARGETS)]
                    datatype = list(DTYPES)[(c * 7 + j) % 3]
                    x = _unique_input(c, j, shape, DTYPES[datatype])
                    if j % 2:
                        body, headers = infer_binary_body(x, datatype)
                        resp = http.post(f"/v2/models/{name}/infer", content=body,
                                         headers=headers)
                    else:
                        resp = http.post(f"/v2/models/{name}/infer",
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

        with ThreadPoolExecutor(CLIENTS) as pool:
            answered = sum(pool.map(client, range(CLIENTS)))
        metrics = httpx.get(f"{server.url}/metrics").text
    assert not failures, failures[:5]
    assert answered == CLIENTS * REQUESTS
    # Requests were actually joined: fewer kernel runs than requests on the busiest model.
    name = "layer_norm_1024"
    assert _metric(metrics, "nv_inference_exec_count", name) < _metric(
        metrics, "nv_inference_request_success", name)


@pytest.fixture(scope="module")
def slow_server():
    """Batches wait 30 s to fill (deadline mode); the queue holds one request; 64-row batches."""
    with running_server("--batch-wait", "deadline", "--max-queue-size", "1",
                        "--max-queue-delay-us", "30000000",
                        "--max-batch-size", "64") as server:
        yield server


def _wait_for_pending(url: str, model: str, count: int) -> None:
    for _ in range(600):
        text = httpx.get(f"{url}/metrics").text
        if _metric(text, "nv_inference_pending_request_count", model) == count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{model} never had {count} queued request(s)")


def test_queue_full_timeout_and_oversized_requests(slow_server):
    url = slow_server.url
    model = "layer_norm_1024"
    held = sample_input(model, 1, "FP32", seed=5)
    body = infer_json_body(held, "FP32", parameters={"timeout": 1_500_000})  # 1.5 s, in us
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(httpx.post, f"{url}/v2/models/{model}/infer", json=body, timeout=60)
        _wait_for_pending(url, model, 1)
        # The queue is full: the next request is refused at once with Retry-After.
        full = httpx.post(f"{url}/v2/models/{model}/infer",
                          json=infer_json_body(held, "FP32"), timeout=60)
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
        resp = httpx.post(f"{url}/v2/models/{model}/infer", content=payload, headers=headers,
                          timeout=60)
        assert resp.status_code == 200, resp.text
        assert_matches_reference(model, x, decode_response(resp), "FP32")
    text = httpx.get(f"{url}/metrics").text
    assert _metric(text, "nv_inference_request_failure", model, "REJECTED") == 1
    assert _metric(text, "nv_inference_request_failure", model, "TIMEOUT") == 1


def test_sigterm_runs_queued_requests_and_exits():
    """A request waiting for a fuller batch when SIGTERM arrives is still answered, correctly."""
    server = Server("--batch-wait", "deadline", "--max-queue-delay-us", "30000000",
                    "--max-batch-size", "64").wait_ready()
    try:
        model = "rms_norm_512"
        x = sample_input(model, 2, "FP32", seed=11)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{server.url}/v2/models/{model}/infer",
                                  json=infer_json_body(x, "FP32"), timeout=60)
            _wait_for_pending(server.url, model, 1)
            server.terminate()
            resp = pending.result()
        assert resp.status_code == 200, resp.text
        assert_matches_reference(model, x, decode_response(resp), "FP32")
        assert server.stop() == 0
    finally:
        if server.proc.poll() is None:
            server.stop()


def test_sigterm_under_load_every_answer_is_correct():
    server = Server().wait_ready()
    model = "layer_norm_1024"
    layer = local_layer(model)
    answered = threading.Semaphore(0)
    stop = threading.Event()
    results: list[tuple[str, str]] = []  # (outcome, detail)

    def client(c: int) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for j in range(10_000):
                if stop.is_set():
                    return
                x = _unique_input(c, j, (1024,), np.float32)
                body, headers = infer_binary_body(x, "FP32")
                try:
                    resp = http.post(f"/v2/models/{model}/infer", content=body, headers=headers)
                except httpx.TransportError as exc:  # refused or closed: never answered
                    results.append(("unanswered", type(exc).__name__))
                    return
                if resp.status_code == 200:
                    ok = np.array_equal(decode_response(resp), layer.apply(x))
                    results.append(("ok" if ok else "WRONG", f"{c}-{j}"))
                else:
                    results.append((f"status {resp.status_code}", resp.text))
                    if resp.status_code != 503 or "error" not in orjson.loads(resp.content):
                        return
                answered.release()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
    try:
        for t in threads:
            t.start()
        for _ in range(200):  # let the load build up before the signal
            assert answered.acquire(timeout=60)
        code = server.stop(timeout=120)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
        if server.proc.poll() is None:
            server.proc.kill()
    outcomes = {o for o, _ in results}
    assert code == 0
    assert "WRONG" not in outcomes
    assert outcomes <= {"ok", "unanswered", "status 503"}, [r for r in results
                                                           if r[0].startswith("status")][:3]
    assert sum(o == "ok" for o, _ in results) >= 200


def test_adaptive_batching_runs_a_lone_request_without_waiting_for_the_delay():
    """Adaptive mode (the default) closes a batch once requests stop arriving: with a 60 s
    max_queue_delay, a lone request is still answered (the client gives up after 20 s)."""
    with running_server("--max-queue-delay-us", "60000000") as server:
        model = "layer_norm_1024"
        for seed in range(3):
            x = sample_input(model, 2, "FP32", seed=seed)
            payload, headers = infer_binary_body(x, "FP32")
            resp = httpx.post(f"{server.url}/v2/models/{model}/infer", content=payload,
                              headers=headers, timeout=20)
            assert resp.status_code == 200, resp.text
            assert_matches_reference(model, x, decode_response(resp), "FP32")
