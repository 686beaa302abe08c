"""What the route handlers share: settings, limits, the model registry, metrics, the executor."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from starlette.requests import Request

from .codec import Limits
from .dataplane import DataPlane
from .metrics import Metrics
from .registry import Registry
from .settings import Settings


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


def ctx_of(request: Request) -> Context:
    return request.app.state.ctx
