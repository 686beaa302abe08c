"""Triton's statistics extension (SPEC 7): per-model counts and cumulative durations.

Counted as Triton counts them: ``inference_count`` is rows, ``execution_count`` is batches
the batcher really ran; ``inference_stats`` holds per-request (count, ns) pairs for success,
failure, queueing, decoding (compute_input), the batch's kernel time (compute_infer) and
encoding (compute_output); ``batch_stats`` holds, per executed batch size, how many batches
of that size ran and their compute time. One ``ModelStatistics`` per served model, shared by
both transports; the dict is the HTTP body and parses into the gRPC message as it is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

_PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
           "cache_hit", "cache_miss")


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += int(seconds * 1e9)

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStatistics:
    """The counters of one model (one version: normserve serves version 1)."""

    name: str
    version: str = "1"
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    phases: dict[str, _Duration] = field(default_factory=lambda: {p: _Duration()
                                                                  for p in _PHASES})
    batches: dict[int, _Duration] = field(default_factory=dict)

    def batch(self, rows: int, compute_s: float) -> None:
        """A batch of ``rows`` rows ran in ``compute_s`` seconds."""
        self.inference_count += rows
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        self.batches.setdefault(rows, _Duration()).add(compute_s)

    def success(self, total_s: float, decode_s: float, queue_s: float, compute_s: float,
                encode_s: float) -> None:
        p = self.phases
        p["success"].add(total_s)
        p["compute_input"].add(decode_s)
        p["queue"].add(queue_s)
        p["compute_infer"].add(compute_s)
        p["compute_output"].add(encode_s)

    def failure(self, total_s: float) -> None:
        self.phases["fail"].add(total_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count, "execution_count": self.execution_count,
            "inference_stats": {p: d.as_dict() for p, d in self.phases.items()},
            # The batcher times a batch as a whole (copy in, kernel, views out): compute_infer.
            "batch_stats": [{"batch_size": size, "compute_infer": d.as_dict()}
                            for size, d in sorted(self.batches.items())],
        }
