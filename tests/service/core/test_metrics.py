"""The metrics' per-request and per-batch tallies (service.metrics): exact at every read in
the process, and handed to prometheus-client within ``FLUSH_S``; the queue-depth gauge read
from the queue at each scrape (one process) or told each change (several workers)."""

from __future__ import annotations

import asyncio

import pytest

from normserve.service.core.metrics import FLUSH_S, Metrics

LABELS = {"model": "m", "version": "1"}


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """A value as prometheus-client holds it, without flushing the tallies first."""
    return metrics.registry.get_sample_value(name, {**LABELS, **labels})


def observe(metrics: Metrics, n: int) -> None:
    for i in range(n):
        metrics.observe_success("m", total_s=1e-3 * (i + 1), queue_s=2e-4, decode_s=1e-5,
                                compute_s=3e-5, encode_s=4e-5)


def test_reads_flush_the_tallies_exactly() -> None:
    metrics = Metrics()
    observe(metrics, 7)
    values = metrics.values()
    assert values[("nv_inference_request_success_total", "m")] == 7
    assert values[("nv_inference_request_duration_us_total", "m")] == pytest.approx(28e3)
    assert values[("nv_inference_queue_duration_us_total", "m")] == pytest.approx(1400)
    assert values[("nv_inference_compute_input_duration_us_total", "m")] == pytest.approx(70)
    assert values[("nv_inference_compute_infer_duration_us_total", "m")] == pytest.approx(210)
    assert values[("nv_inference_compute_output_duration_us_total", "m")] == pytest.approx(280)
    assert values[("normserve_request_duration_seconds_count", "m")] == 7
    assert values[("normserve_queue_duration_seconds_count", "m")] == 7
    # Each latency in its own bucket: 1, 2 ms <= 2.5 ms; 3..5 ms <= 5 ms; 6, 7 ms <= 10 ms.
    assert sample(metrics, "normserve_request_duration_seconds_bucket", le="0.0025") == 2
    assert sample(metrics, "normserve_request_duration_seconds_bucket", le="0.005") == 5
    assert sample(metrics, "normserve_request_duration_seconds_bucket", le="0.01") == 7
    body = metrics.render().decode()
    assert 'nv_inference_request_success_total{model="m",version="1"} 7.0' in body


def test_tallies_are_handed_over_within_the_flush_period() -> None:
    async def main() -> tuple[float | None, float | None, float | None, float | None]:
        metrics = Metrics()
        observe(metrics, 3)
        metrics.observe_batch("m", rows=4, requests=2, compute_s=1e-4)
        metrics.observe_batch("m", rows=4, requests=2, compute_s=3e-4)
        metrics.observe_batch("m", rows=1, requests=1, compute_s=2e-4)
        before = sample(metrics, "nv_inference_request_success_total")
        await asyncio.sleep(0)
        still = sample(metrics, "nv_inference_request_success_total")
        await asyncio.sleep(FLUSH_S * 2)
        return (before, still, sample(metrics, "nv_inference_request_success_total"),
                sample(metrics, "nv_inference_exec_count_total"))

    before, still, after, batches = asyncio.run(main())
    assert before is None and still is None  # tallied, not yet handed over
    assert after == 3
    assert batches == 3


def test_batches_are_counted_by_size_and_rows() -> None:
    metrics = Metrics()
    for rows, compute_s in ((4, 1e-4), (4, 3e-4), (1, 2e-4)):
        metrics.observe_batch("m", rows=rows, requests=rows, compute_s=compute_s)
    values = metrics.values()
    assert values[("nv_inference_exec_count_total", "m")] == 3
    assert values[("nv_inference_count_total", "m")] == 9
    assert values[("normserve_batch_executions_total", "m/4")] == 2
    assert values[("normserve_batch_executions_total", "m/1")] == 1
    assert values[("normserve_batch_compute_duration_us_total", "m/4")] == pytest.approx(400)
    assert values[("normserve_compute_duration_seconds_count", "m")] == 3
    assert values[("normserve_batch_size_sum", "m")] == 9
    assert values[("normserve_last_inference_timestamp_ms", "m")] > 0


def test_one_process_reads_the_depth_at_each_scrape() -> None:
    metrics = Metrics()
    queue = [1, 2]
    assert metrics.watch_depth("m", lambda: len(queue)) is None  # nothing to tell
    assert sample(metrics, "nv_inference_pending_request_count") == 2
    queue.append(3)
    assert sample(metrics, "nv_inference_pending_request_count") == 3


def test_several_workers_are_told_each_depth(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    metrics = Metrics()
    observe_depth = metrics.watch_depth("m", lambda: 99)
    assert observe_depth is not None
    observe_depth(5)  # handed over at once: another worker's scrape reads what it wrote
    assert sample(metrics, "nv_inference_pending_request_count") == 5


def test_depth_and_forget() -> None:
    metrics = Metrics()
    observe_depth = metrics.depth_observer("m")
    observe_depth(4)
    observe_depth(2)
    metrics.flush()
    assert sample(metrics, "nv_inference_pending_request_count") == 2
    observe(metrics, 1)
    metrics.forget("m")
    assert sample(metrics, "nv_inference_pending_request_count") is None
    assert sample(metrics, "nv_inference_request_success_total") == 1  # counters stay
