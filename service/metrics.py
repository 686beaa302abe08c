"""Prometheus metrics named after Triton's ``nv_inference_*`` set, per model.

Counters of microseconds (request, queue, compute) as Triton exports them, plus histograms
(``normserve_*_seconds`` and the batch size) for latency quantiles. Each app has its own
registry so that several apps in one process (tests) do not collide. prometheus-client names
counters ``<name>_total`` (``nv_inference_request_success_total``), as the OpenMetrics
convention wants.

With ``--workers N`` the server runs prometheus-client's multiprocess mode (the CLI sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start): every worker writes its values to
memory-mapped files there and a scrape answered by any worker sums them all, so each counter
is the server's total and stays monotone whichever worker answers.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

disable_created_metrics()  # Triton exports no *_created series; neither do we

LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


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
        # Per request, as Triton counts them: each request adds its whole batch's time.
        self.compute_us = Counter("nv_inference_compute_infer_duration_us",
                                  "Cumulative compute time of the requests' batches (us)",
                                  labels, registry=r)
        self.compute_input_us = Counter("nv_inference_compute_input_duration_us",
                                        "Cumulative time decoding requests (us)", labels,
                                        registry=r)
        self.compute_output_us = Counter("nv_inference_compute_output_duration_us",
                                         "Cumulative time encoding answers (us)", labels,
                                         registry=r)
        self.failure_us = Counter("normserve_request_failure_duration_us",
                                  "Cumulative time of failed requests (us)", labels, registry=r)
        # Per executed batch size: the statistics extension's batch_stats.
        self.batches = Counter("normserve_batch_executions", "Executed batches by size",
                               (*labels, "batch_size"), registry=r)
        self.batches_us = Counter("normserve_batch_compute_duration_us",
                                  "Cumulative compute time of batches by size (us)",
                                  (*labels, "batch_size"), registry=r)
        self.last_inference = Gauge("normserve_last_inference_timestamp_ms",
                                    "When the model last ran a batch (ms since the epoch)",
                                    labels, registry=r, multiprocess_mode="max")
        self.pending = Gauge("nv_inference_pending_request_count",
                             "Requests waiting in the model's queue", labels, registry=r,
                             multiprocess_mode="livesum")
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
        Gauge("normserve_process_info", "This server process", ("pid",), registry=r,
              multiprocess_mode="liveall").labels(str(os.getpid())).set(1)
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
                self.exec_count, self.count, self.compute_s, self.batch_size,
                self.last_inference, self.success, self.request_us, self.queue_us,
                self.request_s, self.queue_s, self.compute_us, self.compute_input_us,
                self.compute_output_us))
            self._children[model] = series
        return series

    def _batch_series(self, model: str, rows: int) -> tuple:
        key = (model, rows)
        series = self._children.get(key)
        if series is None:
            series = (self.batches.labels(model, "1", str(rows)),
                      self.batches_us.labels(model, "1", str(rows)))
            self._children[key] = series
        return series

    def observe_batch(self, model: str, rows: int, requests: int, compute_s: float) -> None:
        execs, count, compute_s_hist, batch_size, last = self._series(model)[:5]
        execs.inc()
        count.inc(rows)
        compute_s_hist.observe(compute_s)
        batch_size.observe(rows)
        last.set(time.time() * 1000)
        by_size, by_size_us = self._batch_series(model, rows)
        by_size.inc()
        by_size_us.inc(compute_s * 1e6)

    def observe_success(self, model: str, total_s: float, queue_s: float, decode_s: float,
                        compute_s: float, encode_s: float) -> None:
        (success, request_us, queue_us, request_s, queue_s_hist, compute_us, input_us,
         output_us) = self._series(model)[5:]
        success.inc()
        request_us.inc(total_s * 1e6)
        queue_us.inc(queue_s * 1e6)
        request_s.observe(total_s)
        queue_s_hist.observe(queue_s)
        compute_us.inc(compute_s * 1e6)
        input_us.inc(decode_s * 1e6)
        output_us.inc(encode_s * 1e6)

    def observe_failure(self, model: str, reason: str, total_s: float = 0.0) -> None:
        self.failure.labels(model, "1", reason).inc()
        self.failure_us.labels(model, "1").inc(total_s * 1e6)

    def values(self) -> dict[tuple[str, str], float]:
        """Every sample as ``(sample name, model[/batch size]) -> value``, summed over the
        workers (and, for failures, over the reasons)."""
        registry = self.registry
        if MULTIPROCESS:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        out: dict[tuple[str, str], float] = {}
        for family in registry.collect():
            for sample in family.samples:
                model = sample.labels.get("model")
                if model is None:
                    continue
                size = sample.labels.get("batch_size")
                key = (sample.name, model if size is None else f"{model}/{size}")
                out[key] = out.get(key, 0.0) + sample.value
        return out

    def render(self) -> bytes:
        if MULTIPROCESS:  # every worker's values, summed
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    @staticmethod
    def leave() -> None:
        """This worker is stopping: its live gauges leave the sums (counters stay)."""
        if MULTIPROCESS:
            multiprocess.mark_process_dead(os.getpid())
