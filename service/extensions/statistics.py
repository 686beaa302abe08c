"""Triton's statistics extension (SPEC 7), read back from the metrics every request and batch
already records (``core.metrics``): one source of numbers for ``/metrics`` and for the
statistics, and with ``--workers N`` both are every worker's (prometheus-client's
multiprocess files), whichever worker answers.

Counted as Triton counts them: ``inference_count`` is rows, ``execution_count`` is batches
the batcher really ran; ``inference_stats`` holds per-request (count, ns) pairs for success,
failure, queueing, decoding (compute_input), the request's batch's compute time
(compute_infer) and encoding (compute_output); ``batch_stats`` holds, per executed batch
size, how many batches of that size ran and their compute time. The dicts are the HTTP body
and parse into the gRPC messages as they are.
"""

from __future__ import annotations

from typing import Any

from ..core.metrics import Metrics
from ..core.protocol import VERSION

#: inference_stats phase -> (the counter of its requests, the counter of its microseconds).
_PHASES = {
    "success": ("nv_inference_request_success_total", "nv_inference_request_duration_us_total"),
    "fail": ("nv_inference_request_failure_total", "normserve_request_failure_duration_us_total"),
    "queue": ("nv_inference_request_success_total", "nv_inference_queue_duration_us_total"),
    "compute_input": ("nv_inference_request_success_total",
                      "nv_inference_compute_input_duration_us_total"),
    "compute_infer": ("nv_inference_request_success_total",
                      "nv_inference_compute_infer_duration_us_total"),
    "compute_output": ("nv_inference_request_success_total",
                       "nv_inference_compute_output_duration_us_total"),
}


def _duration(count: float, us: float) -> dict[str, int]:
    return {"count": int(count), "ns": round(us * 1000)}


def model_statistics(metrics: Metrics, names: list[str]) -> list[dict[str, Any]]:
    """The statistics of the models ``names`` (version 1, the one served)."""
    values = metrics.values()
    stats = []
    for name in names:
        def get(sample: str, key: str = name) -> float:
            return values.get((sample, key), 0.0)

        sizes = sorted(int(key.rsplit("/", 1)[1]) for sample, key in values
                       if sample == "normserve_batch_executions_total"
                       and key.startswith(name + "/"))
        stats.append({
            "name": name, "version": VERSION,
            "last_inference": int(get("normserve_last_inference_timestamp_ms")),
            "inference_count": int(get("nv_inference_count_total")),
            "execution_count": int(get("nv_inference_exec_count_total")),
            "inference_stats": {
                phase: _duration(get(count), get(us)) for phase, (count, us) in _PHASES.items()},
            # The batcher times a batch as a whole (copy in, kernel, views out): compute_infer.
            "batch_stats": [
                {"batch_size": size, "compute_infer": _duration(
                    get("normserve_batch_executions_total", f"{name}/{size}"),
                    get("normserve_batch_compute_duration_us_total", f"{name}/{size}"))}
                for size in sizes],
        })
    return stats
