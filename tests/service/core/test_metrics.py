"""The metrics' per-request tallies (service.metrics): exact at every read in the process,
and handed to prometheus-client within one turn of the event loop (what another worker's
scrape reads)."""

from __future__ import annotations

import asyncio

import pytest

from normserve.service.core.metrics import Metrics

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


def test_a_loop_turn_hands_the_tallies_over() -> None:
    async def main() -> tuple[float | None, float | None, float | None]:
        metrics = Metrics()
        observe(metrics, 3)
        metrics.depth_observer("m")(5)
        before = sample(metrics, "nv_inference_request_success_total")
        await asyncio.sleep(0)
        return (before, sample(metrics, "nv_inference_request_success_total"),
                sample(metrics, "nv_inference_pending_request_count"))

    before, after, depth = asyncio.run(main())
    assert before is None  # tallied, not yet handed over
    assert after == 3
    assert depth == 5


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
