"""A model's batcher, set up from its config, the server's overrides and the metrics."""

from __future__ import annotations

from concurrent.futures import Executor

from normserve.kernels import PreparedLayer
from normserve.repository import ModelConfig

from ..batching.batcher import Batcher
from ..core.metrics import Metrics
from ..settings import Settings


def batcher_for(name: str, config: ModelConfig, layer: PreparedLayer, settings: Settings,
                executor: Executor, metrics: Metrics) -> Batcher:
    """The batcher of model ``name``: the server's settings override the model's own."""
    s = settings

    def observe(rows: int, requests: int, compute_s: float) -> None:
        metrics.observe_batch(name, rows, requests, compute_s)

    batcher = Batcher(
        layer, executor,
        max_batch_size=s.max_batch_size or config.max_batch_size,
        max_queue_delay_us=(config.max_queue_delay_us if s.max_queue_delay_us is None
                            else s.max_queue_delay_us),
        max_queue_size=s.max_queue_size or config.max_queue_size,
        batching=s.batching, adaptive=s.batch_wait == "adaptive",
        on_batch=observe)
    batcher.on_depth = metrics.watch_depth(name, lambda: batcher.depth)
    return batcher
