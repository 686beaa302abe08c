"""Triton's model control (SPEC 8) over a registry: load, unload, the poll mode's rescans,
and with several workers, every worker applying a change before it is acknowledged.

In explicit mode the names to serve (``--load-model``, then what the repository API asks)
are kept here, and shared with the other workers through the cluster.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from normserve.repository import ModelError, load_params, parse_config, scan_repository, valid_name

from ..core.errors import ApiError, InvalidInput, ModelNotFound
from .fingerprint import fingerprint
from .model import Model

if TYPE_CHECKING:
    from .registry import Registry

log = logging.getLogger("normserve")
#: How long a change made through one worker waits for the others to apply it.
SYNC_TIMEOUT_S = 10.0


class ModelControl:
    """Load, unload and rescan the models of one registry, in step with the other workers."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        settings = registry.settings
        self.cluster = registry.cluster
        # Explicit model control: the names to serve (None: every folder).
        self._wanted: set[str] | None = None
        if settings.model_control_mode == "explicit" and "*" not in settings.load_models:
            self._wanted = set(settings.load_models)
            self.cluster.seed_wanted(self._wanted)

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
                    log.exception("model repository %s: rescan failed", self.registry.root)
                self.cluster.report(applied=generation)

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
        registry = self.registry
        folder = registry.root / name
        async with registry.lock(name):
            if not valid_name(name) or not folder.is_dir():
                raise ModelNotFound(f"model {name!r}: no such folder in the repository")
            if config is not None:
                try:
                    parse_config(config, "parameters.config")
                    params = load_params(folder)
                except ModelError as exc:
                    raise InvalidInput(str(exc)) from None
                await registry.store.write(name, config, params)
            loaded = await asyncio.to_thread(registry.build, folder, True)
            if loaded is None:
                raise InvalidInput(f"model {name!r}: failed to load ({registry.errors[name]})")
            model, old = registry.add(name, *loaded, fingerprint=fingerprint(folder))
            model.ready = True
            model.batcher.start()
        if old is not None:
            await old.batcher.close()  # its queued requests finish on the old version
        return model

    async def _unload(self, name: str) -> None:
        """Stop serving ``name`` (its folder stays): queued requests finish first."""
        registry = self.registry
        async with registry.lock(name):
            registry.get(name)
            model = registry.remove(name)
        if model is not None:
            await model.batcher.close()

    async def poll_forever(self) -> None:
        """Rescan the repository every ``repository_poll_secs`` (model control ``poll``)."""
        while True:
            await asyncio.sleep(self.registry.settings.repository_poll_secs)
            try:
                await self.rescan()
            except Exception:  # a bad poll is logged; the next one tries again
                log.exception("model repository %s: rescan failed", self.registry.root)

    async def rescan(self) -> None:
        """Load folders added since the last scan, reload changed ones, unload removed ones.
        A folder being written by hand may fail to load: it is reported, and loaded once a
        later scan sees it complete (its fingerprint changes)."""
        registry = self.registry
        folders, _ = await asyncio.to_thread(scan_repository, registry.root)
        wanted = self.wanted()
        present = {f.name: f for f in folders if wanted is None or f.name in wanted}
        for name, folder in present.items():
            current = registry.models.get(name)
            seen_now = await asyncio.to_thread(fingerprint, folder)
            seen = current.fingerprint if current else registry.failed.get(name)
            if seen_now == seen:
                continue
            try:
                await self._load(name)
                log.info("model repository: %s %s", "reloaded" if current else "loaded", name)
            except ApiError as exc:
                registry.failed[name] = seen_now
                log.warning("model repository: %s", exc.message)
        for name in [n for n in registry.models if n not in present]:
            await self._unload(name)
            log.info("model repository: unloaded %s (its folder is gone)", name)
        for name in [n for n in registry.errors if n not in present]:
            del registry.errors[name]
