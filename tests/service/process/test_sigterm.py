"""SIGTERM drains dynamic batching: a real ``normserve serve`` process (the signal and the
exit status are the point): a queued request is still answered, and under load every answer
is correct or a clean refusal."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
from service_helpers import (
    Server,
    assert_matches_reference,
    decode_response,
    infer_binary_body,
    infer_json_body,
    local_layer,
    sample_input,
    unique_input,
    wait_for_pending,
)


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
            with httpx.Client(base_url=server.url, timeout=60) as http:
                wait_for_pending(http, model, 1)
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
                x = unique_input(c, j, (1024,), np.float32)
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
