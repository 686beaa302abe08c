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

In one process, per-request and per-batch numbers are tallied as plain floats and handed to
prometheus-client every ``FLUSH_S`` (``flush``), so many requests cost one update of each
counter, not one each (bench-results/notes.md); a read (``/metrics``, the statistics)
flushes first, so it is exact, and the queue-depth gauge is read from the queue at each
scrape. With ``--workers N`` each request and each change of depth is handed over at once,
before the reply leaves, so that any worker's scrape counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

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

from .protocol import VERSION

disable_created_metrics()  # Triton exports no *_created series; neither do we

LATENCY_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: How long tallies wait, at most, before they are handed to prometheus-client (one process).
FLUSH_S = 0.05
CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Set (by the CLI, before the workers start) when the server runs several workers.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True, slots=True)
class _ModelSeries:
    """The labelled children of one model's families, looked up once: ``labels()`` costs
    microseconds per call, several times per request on the hot path."""

    exec_count: Any
    count: Any
    compute_s: Any
    batch_size: Any
    last_inference: Any
    success: Any
    request_us: Any
    queue_us: Any
    request_s: Any
    queue_s: Any
    compute_us: Any
    compute_input_us: Any
    compute_output_us: Any


@dataclass(slots=True)
class _Tally:
    """One model's successful requests since the last flush (sums, and each request's
    latency and queueing time for the histograms), its batches (each one's rows and compute
    time, and when the last ran) and its queue's latest depth."""

    requests: int = 0
    total_s: float = 0.0
    queue_s: float = 0.0
    decode_s: float = 0.0
    compute_s: float = 0.0
    encode_s: float = 0.0
    latencies: list[tuple[float, float]] = field(default_factory=list)
    batches: list[tuple[int, float]] = field(default_factory=list)
    last_batch_ms: float = 0.0
    depth: int | None = None


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
        #: Read here, when the app starts, not at import: the CLI sets it before the workers
        #: start, and a process may import this module before that.
        self.multiprocess = bool(os.environ.get(MULTIPROC_DIR_ENV))
        self._series_of: dict[str, _ModelSeries] = {}
        self._batch_series_of: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._tallies: dict[str, _Tally] = {}
        self._flush_pending = False

    def _series(self, model: str) -> _ModelSeries:
        series = self._series_of.get(model)
        if series is None:
            series = _ModelSeries(**{f.name: getattr(self, f.name).labels(model, VERSION)
                                     for f in fields(_ModelSeries)})
            self._series_of[model] = series
        return series

    def _batch_series(self, model: str, rows: int) -> tuple[Any, Any]:
        """The (executions, compute microseconds) children of one model's batch size."""
        key = (model, rows)
        series = self._batch_series_of.get(key)
        if series is None:
            series = (self.batches.labels(model, VERSION, str(rows)),
                      self.batches_us.labels(model, VERSION, str(rows)))
            self._batch_series_of[key] = series
        return series

    def observe_batch(self, model: str, rows: int, requests: int, compute_s: float) -> None:
        t = self._tally(model)
        t.batches.append((rows, compute_s))
        t.last_batch_ms = time.time() * 1000
        self._hand_over()

    def observe_success(self, model: str, total_s: float, queue_s: float, decode_s: float,
                        compute_s: float, encode_s: float) -> None:
        t = self._tally(model)
        t.requests += 1
        t.total_s += total_s
        t.queue_s += queue_s
        t.decode_s += decode_s
        t.compute_s += compute_s
        t.encode_s += encode_s
        t.latencies.append((total_s, queue_s))
        self._hand_over()

    def watch_depth(self, model: str, depth: Callable[[], int]) -> Callable[[int], None] | None:
        """The pending-requests gauge of ``model`` follows its queue: in one process the
        gauge reads ``depth()`` at each scrape, and nothing is to be told; with
        ``--workers N`` the returned observer must be told each change (another worker's
        scrape reads what it wrote)."""
        if self.multiprocess:
            return self.depth_observer(model)
        self.pending.labels(model, VERSION).set_function(depth)
        return None

    def depth_observer(self, model: str) -> Callable[[int], None]:
        """What a model's batcher calls with its queue's depth whenever it changes."""
        def observe(depth: int) -> None:
            self._tally(model).depth = depth
            self._hand_over()
        return observe

    def _tally(self, model: str) -> _Tally:
        tally = self._tallies.get(model)
        if tally is None:
            tally = self._tallies[model] = _Tally()
        return tally

    def _hand_over(self) -> None:
        """Flush within ``FLUSH_S``. With ``--workers N`` at once: another worker's scrape
        must count a request before its reply has left."""
        if self.multiprocess:
            self.flush()
        elif not self._flush_pending:
            self._flush_pending = True
            # Without an event loop (a script, a test): at the next read.
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().call_later(FLUSH_S, self.flush)

    def flush(self) -> None:
        """Hand the tallies to prometheus-client (every read of the values does first)."""
        self._flush_pending = False
        tallies, self._tallies = self._tallies, {}
        for model, t in tallies.items():
            if t.depth is not None:
                self.pending.labels(model, VERSION).set(t.depth)
            s = self._series(model)
            if t.batches:
                self._flush_batches(model, s, t)
            if not t.requests:
                continue
            s.success.inc(t.requests)
            s.request_us.inc(t.total_s * 1e6)
            s.queue_us.inc(t.queue_s * 1e6)
            s.compute_us.inc(t.compute_s * 1e6)
            s.compute_input_us.inc(t.decode_s * 1e6)
            s.compute_output_us.inc(t.encode_s * 1e6)
            for total, queued in t.latencies:
                s.request_s.observe(total)
                s.queue_s.observe(queued)

    def _flush_batches(self, model: str, s: _ModelSeries, t: _Tally) -> None:
        s.exec_count.inc(len(t.batches))
        s.count.inc(sum(rows for rows, _ in t.batches))
        s.last_inference.set(t.last_batch_ms)
        by_size: dict[int, list[float]] = {}
        for rows, compute_s in t.batches:
            s.compute_s.observe(compute_s)
            s.batch_size.observe(rows)
            size = by_size.setdefault(rows, [0, 0.0])
            size[0] += 1
            size[1] += compute_s
        for rows, (count, compute_s) in by_size.items():
            executions, compute_us = self._batch_series(model, rows)
            executions.inc(count)
            compute_us.inc(compute_s * 1e6)

    def forget(self, model: str) -> None:
        """A removed model: its queue-depth series goes (its counters stay, as Triton's)."""
        self.flush()
        with contextlib.suppress(KeyError):
            self.pending.remove(model, VERSION)

    def observe_failure(self, model: str, reason: str, total_s: float = 0.0) -> None:
        self.failure.labels(model, VERSION, reason).inc()
        self.failure_us.labels(model, VERSION).inc(total_s * 1e6)

    def values(self) -> dict[tuple[str, str], float]:
        """Every sample as ``(sample name, model[/batch size]) -> value``, summed over the
        workers (and, for failures, over the reasons)."""
        self.flush()
        registry = self.registry
        if self.multiprocess:
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
        self.flush()
        if self.multiprocess:  # every worker's values, summed
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def leave(self) -> None:
        """This worker is stopping: its live gauges leave the sums (counters stay)."""
        self.flush()
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())
