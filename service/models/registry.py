"""The models a server serves, by name: loaded from a repository at start, added or removed
at run time (by ``control`` and ``store``, which change them through ``add`` and ``remove``).

A broken model folder is reported and skipped, never a crash of the server. Each model owns its
batcher; readiness is tracked per model and turns true once its kernels are compiled.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from normserve.kernels import PreparedLayer
from normserve.repository import (
    NAME_PATTERN,
    ModelConfig,
    ModelError,
    load_model,
    recover_repository,
    scan_repository,
)

from ..core.errors import ModelNotFound
from ..core.metrics import Metrics
from ..core.protocol import VERSION
from ..settings import Settings
from .batchers import batcher_for
from .cluster import Cluster
from .control import ModelControl
from .fingerprint import fingerprint
from .model import Model
from .store import ModelStore

log = logging.getLogger("normserve")
DEMO_REPOSITORY = Path(__file__).parents[1] / "demo_repository"


class Registry:
    """Name -> Model, the skipped folders (and why), and the shared compute executor; its
    ``control`` loads and unloads (Triton's model control), its ``store`` registers into the
    repository, its ``cluster`` keeps the workers of one server in step."""

    def __init__(self, settings: Settings, executor: Executor, metrics: Metrics) -> None:
        self.settings = settings
        self.executor = executor
        self.metrics = metrics
        self.models: dict[str, Model] = {}
        self.errors: dict[str, str] = {}  # folder name -> why it was skipped
        self.failed: dict[str, tuple] = {}  # name -> fingerprint of a folder that failed
        self._locks: dict[str, asyncio.Lock] = {}  # one change of a name at a time
        self.cluster = Cluster(settings.runtime_dir, settings.workers)
        self.control = ModelControl(self)
        self.store = ModelStore(self)

    @property
    def root(self) -> Path:
        repo = self.settings.model_repository
        return Path(repo) if repo else DEMO_REPOSITORY

    def load_repository(self) -> None:
        """Finish what a crash interrupted, then load every valid folder (in explicit mode,
        the ``--load-model`` ones); report and skip the rest."""
        if self.settings.model_repository is not None:
            try:
                for line in recover_repository(self.root):
                    log.warning("model repository %s: %s", self.root, line)
            except OSError as exc:  # a read-only repository has nothing of ours to finish
                log.info("model repository %s: no recovery (%s)", self.root, exc.strerror)
        folders, skipped = scan_repository(self.root)
        for name in skipped:
            self.errors[name] = f"name must match {NAME_PATTERN.pattern}"
            log.warning("skipping model folder %r: %s", name, self.errors[name])
        wanted = self.control.wanted()
        for folder in folders:
            if wanted is not None and folder.name not in wanted:
                continue
            loaded = self.build(folder)
            if loaded is not None:
                self.add(folder.name, *loaded, fingerprint=fingerprint(folder))

    def build(self, folder: Path, warm: bool = False
              ) -> tuple[ModelConfig, PreparedLayer] | None:
        """A folder's config and layer (compiled when ``warm``), or None with the reason
        recorded and logged."""
        try:
            config, layer = load_model(folder, self.settings.device)
            if warm and self.settings.warmup:
                layer.warmup()
        except ModelError as exc:
            self.errors[folder.name] = str(exc)
            log.warning("skipping model %s: %s", folder.name, exc)
            return None
        self.errors.pop(folder.name, None)
        return config, layer

    def index(self) -> list[dict[str, Any]]:
        """Every model folder of the repository and every served model, with its state:
        READY, LOADING (compiling), or UNAVAILABLE with the reason (failed, not loaded)."""
        try:
            folders, skipped = scan_repository(self.root)
        except ModelError:
            folders, skipped = [], []
        names = {f.name for f in folders} | set(skipped) | set(self.models) | set(self.errors)
        index = []
        for name in sorted(names):
            model = self.models.get(name)
            if model is not None:
                state, reason = ("READY", "") if model.ready else ("LOADING", "")
            else:
                state, reason = "UNAVAILABLE", self.errors.get(name, "unloaded")
            index.append({"name": name, "version": VERSION, "state": state, "reason": reason})
        return index

    def add(self, name: str, config: ModelConfig, layer: PreparedLayer,
            fingerprint: tuple | None = None) -> tuple[Model, Model | None]:
        """Serve a model under ``name``; returns it and the model it replaced, if any."""
        batcher = batcher_for(name, config, layer, self.settings, self.executor, self.metrics)
        model = Model(name, config, layer, batcher, fingerprint=fingerprint)
        self.failed.pop(name, None)
        old = self.models.get(name)
        self.models[name] = model
        self.errors.pop(name, None)
        return model, old

    def remove(self, name: str) -> Model | None:
        model = self.models.pop(name, None)
        if model is not None:
            self.metrics.forget(name)
        return model

    def lock(self, name: str) -> asyncio.Lock:
        """Held by every change of ``name`` (load, unload, register), one at a time."""
        return self._locks.setdefault(name, asyncio.Lock())

    def get(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            why = self.errors.get(name)
            raise ModelNotFound(f"model {name!r}: " + (f"failed to load ({why})" if why
                                                       else "unknown model"))
        return model

    @property
    def ready(self) -> bool:
        return all(m.ready for m in self.models.values())

    async def warm(self, model: Model) -> None:
        """Compile (or load from Numba's cache) a model's kernels, then mark it ready."""
        if self.settings.warmup:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self.executor, model.layer.warmup)
        model.ready = True
