"""Run-time registration (``PUT``/``DELETE /v1/models/{name}``, SPEC 8): the model is written
into the repository, complete and synced, before it is served and acknowledged; a removal is
durable before it is acknowledged. A repository that cannot be written changes nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from normserve.kernels import PreparedLayer
from normserve.repository import ModelConfig, ModelError, remove_model, write_model

from ..core.errors import Conflict, InsufficientStorage
from .fingerprint import fingerprint
from .model import Model

if TYPE_CHECKING:
    from .registry import Registry


class ModelStore:
    """Durable registration into a registry's repository."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def _writable_root(self) -> Path:
        if self.registry.settings.model_repository is None:
            raise Conflict("repository: the built-in demo repository cannot be changed; "
                           "start the server with --model-repository DIR to register "
                           "models")
        return self.registry.root

    async def register(self, name: str, config: ModelConfig, params: dict[str, Any],
                       layer: PreparedLayer) -> tuple[Model, Model | None, tuple[int, int]]:
        """Write the model into the repository (durable before this returns), serve it, and
        have every worker serve it; a 507 naming the cause when the repository cannot be
        written (nothing changes). Returns the model, the one it replaced, and (workers
        that serve it, workers)."""
        registry = self.registry
        async with registry.lock(name):
            await self.write(name, config.model_dump(exclude_none=True), params)
            model, old = registry.add(name, config, layer,
                                      fingerprint=fingerprint(registry.root / name))
            model.ready = True  # the caller compiled its kernels
            model.batcher.start()
        if old is not None:
            await old.batcher.close()  # its queued requests finish on the old version
        return model, old, await registry.control.synced(loaded={name})

    async def write(self, name: str, config: dict[str, Any], params: dict[str, Any]) -> None:
        """Write (or replace) the folder ``name`` durably; 409/507 when it cannot be."""
        root = self._writable_root()
        try:
            await asyncio.to_thread(write_model, root, name, config, params)
        except OSError as exc:
            raise InsufficientStorage(f"repository: cannot write model {name!r} into {root} "
                                      f"({exc.strerror or exc}); nothing was changed") from None

    async def unregister(self, name: str) -> Model:
        """Move the model's folder out of the repository (durable), then stop serving it."""
        registry = self.registry
        root = self._writable_root()
        async with registry.lock(name):
            registry.get(name)
            try:
                await asyncio.to_thread(remove_model, root, name)
            except ModelError:
                pass  # served, but its folder is already gone: nothing to move
            except OSError as exc:
                raise InsufficientStorage(f"repository: cannot remove model {name!r} from "
                                          f"{root} ({exc.strerror or exc}); nothing was "
                                          "changed") from None
            model = registry.remove(name)
        await registry.control.synced(drop=name)
        return model
