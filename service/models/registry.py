"""The models a server serves: loaded from a repository, added or removed at run time.

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
    load_params,
    parse_config,
    recover_repository,
    remove_model,
    scan_repository,
    valid_name,
    write_model,
)

from ..batching.batcher import Batcher
from ..core.errors import ApiError, Conflict, InsufficientStorage, InvalidInput, ModelNotFound
from ..core.metrics import Metrics
from ..core.protocol import VERSION
from ..settings import Settings
from .cluster import Cluster
from .model import Model

log = logging.getLogger("normserve")
#: How long a change made through one worker waits for the others to apply it.
SYNC_TIMEOUT_S = 10.0
DEMO_REPOSITORY = Path(__file__).parents[1] / "demo_repository"


class Registry:
    """Name -> Model, plus the skipped folders and the shared compute executor."""

    def __init__(self, settings: Settings, executor: Executor, metrics: Metrics) -> None:
        self.settings = settings
        self.executor = executor
        self.metrics = metrics
        self.models: dict[str, Model] = {}
        self.errors: dict[str, str] = {}  # folder name -> why it was skipped
        self._locks: dict[str, asyncio.Lock] = {}  # one change of a name at a time
        self._failed: dict[str, tuple] = {}  # name -> fingerprint of a folder that failed
        self.cluster = Cluster(settings.runtime_dir, settings.workers)
        # Explicit model control: the names to serve (None: every folder).
        self._wanted: set[str] | None = None
        if settings.model_control_mode == "explicit" and "*" not in settings.load_models:
            self._wanted = set(settings.load_models)
            self.cluster.seed_wanted(self._wanted)

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
        wanted = self.wanted()
        for folder in folders:
            if wanted is not None and folder.name not in wanted:
                continue
            loaded = self._build(folder)
            if loaded is not None:
                self.add(folder.name, *loaded, fingerprint=_fingerprint(folder))

    def _build(self, folder: Path, warm: bool = False
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

    def wanted(self) -> set[str] | None:
        """The models explicit model control serves (shared by the workers), else None."""
        if self._wanted is None:
            return None
        return self.cluster.wanted() if self.cluster.active else self._wanted

    async def synced(self, loaded: set[str] | None = None, drop: str | None = None
                     ) -> tuple[int, int]:
        """Tell the other workers of a change (this one has it) and wait for them, at most
        ``SYNC_TIMEOUT_S``: (workers that have it, workers)."""
        if self._wanted is not None:
            self._wanted = (self._wanted | (loaded or set())) - {drop}
        generation = self.cluster.changed(loaded, drop)
        return await self.cluster.wait_applied(generation, SYNC_TIMEOUT_S)

    async def follow_forever(self) -> None:
        """With several workers: rescan whenever a sibling changed something."""
        while True:
            await asyncio.sleep(0.05)
            generation = self.cluster.generation()
            if generation > self.cluster.applied:
                try:
                    await self.rescan()
                except Exception:
                    log.exception("model repository %s: rescan failed", self.root)
                self.cluster.report(applied=generation)

    # --- model control (SPEC 8): load, unload, poll ------------------------------------------
    async def load(self, name: str, config: dict[str, Any] | None = None) -> tuple[int, int]:
        """Load (or reload) ``name`` on every worker (see ``_load``); (workers that have
        it, workers)."""
        await self._load(name, config)
        return await self.synced(loaded={name})

    async def unload(self, name: str) -> tuple[int, int]:
        """Stop serving ``name`` on every worker (its folder stays)."""
        await self._unload(name)
        return await self.synced(drop=name)

    async def _load(self, name: str, config: dict[str, Any] | None = None) -> Model:
        """Load (or reload) ``name`` from its folder, warm, then serve it in place of the
        current version; with ``config``, the folder's config.json is replaced first,
        durably (Triton's load with a configuration override)."""
        folder = self.root / name
        async with self._name_lock(name):
            if not valid_name(name) or not folder.is_dir():
                raise ModelNotFound(f"model {name!r}: no such folder in the repository")
            if config is not None:
                try:
                    parse_config(config, "parameters.config")
                    params = load_params(folder)
                except ModelError as exc:
                    raise InvalidInput(str(exc)) from None
                await self._write(name, config, params)
            loaded = await asyncio.to_thread(self._build, folder, True)
            if loaded is None:
                raise InvalidInput(f"model {name!r}: failed to load ({self.errors[name]})")
            model, old = self.add(name, *loaded, fingerprint=_fingerprint(folder))
            model.ready = True
            model.batcher.start()
        if old is not None:
            await old.batcher.close()  # its queued requests finish on the old version
        return model

    async def _unload(self, name: str) -> None:
        """Stop serving ``name`` (its folder stays): queued requests finish first."""
        async with self._name_lock(name):
            self.get(name)
            model = self.remove(name)
        if model is not None:
            await model.batcher.close()

    async def poll_forever(self) -> None:
        """Rescan the repository every ``repository_poll_secs`` (model control ``poll``)."""
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.rescan()
            except Exception:  # a bad poll is logged; the next one tries again
                log.exception("model repository %s: rescan failed", self.root)

    async def rescan(self) -> None:
        """Load folders added since the last scan, reload changed ones, unload removed ones.
        A folder being written by hand may fail to load: it is reported, and loaded once a
        later scan sees it complete (its fingerprint changes)."""
        folders, _ = await asyncio.to_thread(scan_repository, self.root)
        wanted = self.wanted()
        present = {f.name: f for f in folders if wanted is None or f.name in wanted}
        for name, folder in present.items():
            current = self.models.get(name)
            fingerprint = await asyncio.to_thread(_fingerprint, folder)
            seen = current.fingerprint if current else self._failed.get(name)
            if fingerprint == seen:
                continue
            try:
                await self._load(name)
                log.info("model repository: %s %s", "reloaded" if current else "loaded", name)
            except ApiError as exc:
                self._failed[name] = fingerprint
                log.warning("model repository: %s", exc.message)
        for name in [n for n in self.models if n not in present]:
            await self._unload(name)
            log.info("model repository: unloaded %s (its folder is gone)", name)
        for name in [n for n in self.errors if n not in present]:
            del self.errors[name]

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

    def batcher_for(self, name: str, config: ModelConfig, layer: PreparedLayer) -> Batcher:
        s = self.settings

        def observe(rows: int, requests: int, compute_s: float) -> None:
            self.metrics.observe_batch(name, rows, requests, compute_s)

        return Batcher(
            layer, self.executor,
            max_batch_size=s.max_batch_size or config.max_batch_size,
            max_queue_delay_us=(config.max_queue_delay_us if s.max_queue_delay_us is None
                                else s.max_queue_delay_us),
            max_queue_size=s.max_queue_size or config.max_queue_size,
            batching=s.batching, adaptive=s.batch_wait == "adaptive",
            on_batch=observe)

    def add(self, name: str, config: ModelConfig, layer: PreparedLayer,
            fingerprint: tuple | None = None) -> tuple[Model, Model | None]:
        """Serve a model under ``name``; returns it and the model it replaced, if any."""
        model = Model(name, config, layer, self.batcher_for(name, config, layer),
                      fingerprint=fingerprint)
        self._failed.pop(name, None)
        old = self.models.get(name)
        self.models[name] = model
        self.errors.pop(name, None)
        model.batcher.on_depth = self.metrics.depth_observer(name)
        return model, old

    def _writable_root(self) -> Path:
        if self.settings.model_repository is None:
            raise Conflict("repository: the built-in demo repository cannot be changed; "
                           "start the server with --model-repository DIR to register "
                           "models")
        return self.root

    def _name_lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def register(self, name: str, config: ModelConfig, params: dict[str, Any],
                       layer: PreparedLayer) -> tuple[Model, Model | None, tuple[int, int]]:
        """Write the model into the repository (durable before this returns), serve it, and
        have every worker serve it; a 507 naming the cause when the repository cannot be
        written (nothing changes). Returns the model, the one it replaced, and (workers
        that serve it, workers)."""
        async with self._name_lock(name):
            await self._write(name, config.model_dump(exclude_none=True), params)
            model, old = self.add(name, config, layer,
                                  fingerprint=_fingerprint(self.root / name))
            model.ready = True  # the caller compiled its kernels
            model.batcher.start()
        if old is not None:
            await old.batcher.close()  # its queued requests finish on the old version
        return model, old, await self.synced(loaded={name})

    async def _write(self, name: str, config: dict[str, Any], params: dict[str, Any]) -> None:
        root = self._writable_root()
        try:
            await asyncio.to_thread(write_model, root, name, config, params)
        except OSError as exc:
            raise InsufficientStorage(f"repository: cannot write model {name!r} into {root} "
                                      f"({exc.strerror or exc}); nothing was changed") from None

    async def unregister(self, name: str) -> Model:
        """Move the model's folder out of the repository (durable), then stop serving it."""
        root = self._writable_root()
        async with self._name_lock(name):
            self.get(name)
            try:
                await asyncio.to_thread(remove_model, root, name)
            except ModelError:
                pass  # served, but its folder is already gone: nothing to move
            except OSError as exc:
                raise InsufficientStorage(f"repository: cannot remove model {name!r} from {root} "
                                          f"({exc.strerror or exc}); nothing was changed") from None
            model = self.remove(name)
        await self.synced(drop=name)
        return model

    def remove(self, name: str) -> Model | None:
        model = self.models.pop(name, None)
        if model is not None:
            self.metrics.forget(name)
        return model

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
            await loop.run_in_executor(self.executor, _warm, model)
        model.ready = True


def _fingerprint(folder: Path) -> tuple:
    """What changes when a model folder is replaced or edited: the folder's inode (our
    writes rename a new folder in) and each file's inode, size and modification time."""
    try:
        parts = [folder.stat().st_ino]
        for child in sorted(folder.iterdir()):
            st = child.stat()
            parts.append((child.name, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(parts)
    except OSError:
        return ()


def _warm(model: Model) -> None:
    model.layer.warmup()
