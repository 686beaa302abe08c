"""Prometheus metrics named after Triton's ``nv_inference_*`` set, per model.

Counters of microseconds (request, queue, compute) as Triton exports them, plus histograms
(``normserve_*_seconds`` and the batch size) for latency quantiles. Each app has its own
registry so that several apps in one process (tests) do not collide. With ``--workers N``
each worker reports its own numbers. prometheus-client names counters ``<name>_total``
(``nv_inference_request_success_total``), as the OpenMetrics convention wants.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # Triton exports no *_created series; neither do we

LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The service's metric families in one registry."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        labels = ("model", "version")
        self.success = Counter("nv_inference_request_success",
                               "Number of successful inference requests", labels, registry=r)
        self.failure = Counter("nv_inference_request_failure",
                               "Number of failed inference requests", (*labels, "reason"),
                               registry=r)
        self.count = Counter("nv_inference_count", "Number of inferences performed (rows)",
                             labels, registry=r)
        self.exec_count = Counter("nv_inference_exec_count",
                                  "Number of model executions (batches) performed", labels,
                                  registry=r)
        self.request_us = Counter("nv_inference_request_duration_us",
                                  "Cumulative end-to-end inference request time (us)", labels,
                                  registry=r)
        self.queue_us = Counter("nv_inference_queue_duration_us",
                                "Cumulative time requests spent queued (us)", labels, registry=r)
        self.compute_us = Counter("nv_inference_compute_infer_duration_us",
                                  "Cumulative compute time of the batches (us)", labels,
                                  registry=r)
        self.pending = Gauge("nv_inference_pending_request_count",
                             "Requests waiting in the model's queue", labels, registry=r)
        self.request_s = Histogram("normserve_request_duration_seconds",
                                   "Inference request latency", labels,
                                   buckets=LATENCY_BUCKETS, registry=r)
        self.queue_s = Histogram("normserve_queue_duration_seconds",
                                 "Time a request waited for its batch", labels,
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.compute_s = Histogram("normserve_compute_duration_seconds",
                                   "Kernel time of a batch", labels, buckets=LATENCY_BUCKETS,
                                   registry=r)
        # Which process answered a scrape: with --workers N each worker has its own numbers.
        Gauge("normserve_process_info", "This server process", ("pid",),
              registry=r).labels(str(os.getpid())).set(1)
        self.batch_size = Histogram("normserve_batch_size", "Rows per executed batch", labels,
                                    buckets=BATCH_BUCKETS, registry=r)
        self._children: dict[str, tuple] = {}

    def _series(self, model: str) -> tuple:
        """The labelled children of one model, looked up once (``labels()`` costs microseconds
        per call, several times per request on the hot path)."""
        series = self._children.get(model)
        if series is None:
            lab = (model, "1")
            series = tuple(m.labels(*lab) for m in (
                self.exec_count, self.count, self.compute_us, self.compute_s, self.batch_size,
                self.success, self.request_us, self.queue_us, self.request_s, self.queue_s))
            self._children[model] = series
        return series

    def observe_batch(self, model: str, rows: int, requests: int, compute_s: float) -> None:
        execs, count, compute_us, compute_s_hist, batch_size = self._series(model)[:5]
        execs.inc()
        count.inc(rows)
        compute_us.inc(compute_s * 1e6)
        compute_s_hist.observe(compute_s)
        batch_size.observe(rows)

    def observe_success(self, model: str, total_s: float, queue_s: float) -> None:
        success, request_us, queue_us, request_s, queue_s_hist = self._series(model)[5:]
        success.inc()
        request_us.inc(total_s * 1e6)
        queue_us.inc(queue_s * 1e6)
        request_s.observe(total_s)
        queue_s_hist.observe(queue_s)

    def observe_failure(self, model: str, reason: str) -> None:
        self.failure.labels(model, "1", reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
