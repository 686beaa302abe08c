"""What the transports share: settings, limits, the model registry, metrics, the executor."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ..models.registry import Registry
from ..settings import Settings
from .dataplane import DataPlane
from .metrics import Metrics
from .tensors import Limits


@dataclass
class Context:
    settings: Settings
    limits: Limits
    metrics: Metrics
    registry: Registry
    # One compute thread: the kernels are parallel inside, and batches of different models
    # then queue here rather than oversubscribing the cores.
    executor: ThreadPoolExecutor
    draining: bool = False
    dataplane: DataPlane = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.dataplane = DataPlane(self)

