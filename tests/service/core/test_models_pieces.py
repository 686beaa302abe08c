"""The registry's pieces alone, on a repository of the test's own: folder fingerprints, a
model's batcher from its config, durable registration (``ModelStore``) and model control's
rescans and explicit wanted set (``ModelControl``)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from service_repository_cases import rms_config

from normserve.kernels import prepare
from normserve.repository import parse_config, save_model
from normserve.service.core.errors import Conflict, ModelNotFound
from normserve.service.core.metrics import Metrics
from normserve.service.models.batchers import batcher_for
from normserve.service.models.fingerprint import fingerprint
from normserve.service.models.registry import Registry
from normserve.service.settings import Settings

WEIGHT = {"weight": np.ones(4, np.float32)}


def registry_of(executor: Any, root: Path | None, **settings: Any) -> Registry:
    registry = Registry(Settings(model_repository=str(root) if root else None, warmup=False,
                                 **settings), executor, Metrics())
    registry.load_repository()
    return registry


def test_a_fingerprint_changes_with_the_folder(tmp_path: Path) -> None:
    save_model(tmp_path / "m", rms_config(4), WEIGHT)
    before = fingerprint(tmp_path / "m")
    assert before == fingerprint(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text((tmp_path / "m" / "config.json").read_text()
                                                + " ")
    assert fingerprint(tmp_path / "m") != before
    assert fingerprint(tmp_path / "gone") == ()


def test_a_batcher_takes_the_servers_overrides_and_reports_its_depth(executor) -> None:
    config = parse_config({**rms_config(4), "max_batch_size": 16, "max_queue_size": 8}, "x")
    layer = prepare("rms_norm", WEIGHT, normalized_shape=[4])
    metrics = Metrics()
    own = batcher_for("m", config, layer, Settings(), executor, metrics)
    assert (own.max_batch_size, own.max_queue_size) == (16, 8)
    assert own.max_delay_s * 1e6 == config.max_queue_delay_us
    overridden = batcher_for("m", config, layer, Settings(max_batch_size=4, max_queue_size=2,
                                                          max_queue_delay_us=0, batching=False,
                                                          batch_wait="deadline"),
                             executor, metrics)
    assert (overridden.max_batch_size, overridden.max_queue_size) == (4, 2)
    assert overridden.max_delay_s == 0 and not overridden.batching and not overridden.adaptive
    assert overridden.on_depth is None  # one process: the gauge reads the queue itself

    async def queue_two() -> float | None:
        tasks = [asyncio.create_task(overridden.submit(np.ones((1, 4), np.float32), 30.0))
                 for _ in range(2)]
        await asyncio.sleep(0)  # queued; the batcher's loop is not started
        depth = metrics.registry.get_sample_value("nv_inference_pending_request_count",
                                                  {"model": "m", "version": "1"})
        overridden.start()
        await asyncio.gather(*tasks)
        await overridden.close()
        return depth

    assert asyncio.run(queue_two()) == 2


def test_the_demo_repository_refuses_registration(executor) -> None:
    registry = registry_of(executor, None)
    config = parse_config(rms_config(4), "body")
    layer = prepare("rms_norm", WEIGHT, normalized_shape=[4])
    with pytest.raises(Conflict):
        asyncio.run(registry.store.register("m", config, WEIGHT, layer))
    with pytest.raises(Conflict):
        asyncio.run(registry.store.unregister("rms_norm_512"))
    assert "m" not in registry.models and "rms_norm_512" in registry.models


def test_registration_is_written_before_it_is_served_and_removal_is_durable(
        executor, model_repository: Path) -> None:
    registry = registry_of(executor, model_repository)
    config = parse_config(rms_config(4), "body")
    layer = prepare("rms_norm", WEIGHT, normalized_shape=[4])

    async def main() -> None:
        model, old, workers = await registry.store.register("m", config, WEIGHT, layer)
        assert old is None and workers == (1, 1) and model.ready
        assert (model_repository / "m" / "config.json").is_file()
        assert model.fingerprint == fingerprint(model_repository / "m")
        assert registry.get("m") is model
        assert await registry.store.unregister("m") is model
        await model.batcher.close()

    asyncio.run(main())
    assert not (model_repository / "m").exists() and "m" not in registry.models
    with pytest.raises(ModelNotFound):
        asyncio.run(registry.store.unregister("m"))


def test_a_rescan_loads_new_folders_skips_a_broken_one_until_it_changes_and_unloads_gone_ones(
        executor, model_repository: Path) -> None:
    registry = registry_of(executor, model_repository)
    save_model(model_repository / "a", rms_config(4), WEIGHT)
    broken = model_repository / "b"
    broken.mkdir()
    (broken / "config.json").write_text('{"kind": "no_such_kind"}')

    async def main() -> None:
        await registry.control.rescan()
        assert set(registry.models) == {"a"} and "b" in registry.errors
        failed = registry.failed["b"]
        await registry.control.rescan()  # unchanged: not tried again
        assert registry.failed["b"] == failed
        shutil.rmtree(model_repository / "a")
        await registry.control.rescan()
        assert "a" not in registry.models

    asyncio.run(main())


def test_explicit_control_serves_the_wanted_names_and_remembers_loads(
        executor, model_repository: Path) -> None:
    for name in ("a", "b"):
        save_model(model_repository / name, rms_config(4), WEIGHT)
    registry = registry_of(executor, model_repository, model_control_mode="explicit",
                           load_models=("a",))
    assert set(registry.models) == {"a"} and registry.control.wanted() == {"a"}

    async def main() -> None:
        assert await registry.control.load("b") == (1, 1)
        await registry.control.rescan()  # "b" is wanted now: it stays
        assert set(registry.models) == {"a", "b"}
        await registry.control.unload("a")
        assert registry.control.wanted() == {"b"}
        os.utime(model_repository / "a")
        await registry.control.rescan()  # "a" is not wanted: not loaded again
        assert set(registry.models) == {"b"}

    asyncio.run(main())
