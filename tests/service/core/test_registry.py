"""The registry and the data plane in-process: loading repositories, skipping broken model
folders (with the reason kept), model control, and how ``DataPlane.infer`` turns the batcher's
refusals into the 503s both transports answer.

The end-to-end repository tests see this through a server's HTTP answers; here the
``Registry`` and ``DataPlane`` objects a server builds are driven directly (no warm-up: the
kernels compile, or load from Numba's cache, on first use), so each case is exact and fast.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from multiprocessing import shared_memory
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from normserve.kernels import prepare
from normserve.service.batching.batcher import Closed
from normserve.service.core.calls import InferCall
from normserve.service.core.context import Context
from normserve.service.core.dataplane import DataPlane
from normserve.service.core.errors import ApiError
from normserve.service.models.registry import DEMO_REPOSITORY

TOKEN = "t0ken"
AUTH = f"Bearer {TOKEN}"
DEMO_MODELS = {"add_layer_norm_256", "add_rms_norm_512", "batch_norm_8", "gemma_rms_norm_256",
               "group_norm_8", "instance_norm_4", "layer_norm_1024", "rms_norm_512",
               "spectral_norm_64x32", "weight_norm_64x32"}


def call_of(x: np.ndarray, **fields: Any) -> InferCall:
    return InferCall(fields.pop("request_id", None), "input", x, False,
                     fields.pop("timeout_s", None), **fields)


async def infer(plane: DataPlane, name: str, call: InferCall, version: str | None = None
                ) -> np.ndarray:
    async def decode() -> InferCall:
        return call

    return (await plane.infer(name, version, decode)).output


def failures(ctx: Context, name: str, reason: str) -> float:
    return ctx.metrics.registry.get_sample_value(
        "nv_inference_request_failure_total",
        {"model": name, "version": "1", "reason": reason}) or 0.0


# --- loading --------------------------------------------------------------------------------

def test_the_demo_repository_loads_every_model_with_its_config(make_context) -> None:
    ctx = make_context()
    registry = ctx.registry
    assert registry.root == DEMO_REPOSITORY
    assert set(registry.models) == DEMO_MODELS and registry.errors == {}
    config = json.loads((DEMO_REPOSITORY / "layer_norm_1024" / "config.json").read_text())
    batcher = registry.get("layer_norm_1024").batcher
    assert batcher.max_batch_size == config["max_batch_size"]
    assert batcher.max_delay_s == config["max_queue_delay_us"] / 1e6
    assert batcher.max_queue_size == config["max_queue_size"]
    assert batcher.adaptive and batcher.batching
    assert not registry.ready  # loaded, not yet warm
    assert [m["state"] for m in registry.index()] == ["LOADING"] * len(DEMO_MODELS)
    metadata = registry.get("layer_norm_1024").metadata()
    assert metadata["inputs"][0]["shape"] == [-1, 1024]
    assert metadata["outputs"][0]["shape"] == [-1, 1024]


def test_settings_override_every_models_batching(make_context) -> None:
    ctx = make_context(max_batch_size=3, max_queue_delay_us=7, max_queue_size=5,
                       batch_wait="deadline", batching=False)
    for model in ctx.registry.models.values():
        b = model.batcher
        assert (b.max_batch_size, b.max_delay_s, b.max_queue_size) == (3, 7e-6, 5)
        assert not b.adaptive and not b.batching


def write(folder: Path, config: Any = None, params: bytes | None = None) -> None:
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str)
                                            else json.dumps(config))
    if params is not None:
        (folder / "params.safetensors").write_bytes(params)


@pytest.fixture()
def repository(tmp_path: Path) -> Path:
    """Two good models (copied from the demo) and one broken folder of each kind."""
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("layer_norm_1024", "rms_norm_512"):
        shutil.copytree(DEMO_REPOSITORY / name, root / name)
    write(root / "no_config")
    write(root / "bad_json", "{not json")
    write(root / "bad_kind", {"kind": "dropout"})
    write(root / "bad_params", {"kind": "layer_norm", "normalized_shape": [4]}, b"garbage")
    shutil.copytree(DEMO_REPOSITORY / "layer_norm_1024", root / "wrong_shape")
    config = json.loads((root / "wrong_shape" / "config.json").read_text())
    (root / "wrong_shape" / "config.json").write_text(json.dumps(
        {**config, "normalized_shape": [512], "input_shape": [512]}))
    write(root / "bad name", {"kind": "layer_norm", "normalized_shape": [4]})
    write(root / ".hidden", "{not json")
    (root / "stray_file.txt").write_text("not a model")
    return root


#: Broken folder -> a word its recorded reason must contain.
BROKEN = {"no_config": "missing", "bad_json": "JSON", "bad_kind": "kind",
          "bad_params": "params", "wrong_shape": "weight", "bad name": "name must match"}


def test_broken_folders_are_skipped_with_their_reason(make_context, repository: Path) -> None:
    ctx = make_context(model_repository=str(repository))
    registry = ctx.registry
    assert set(registry.models) == {"layer_norm_1024", "rms_norm_512"}
    assert set(registry.errors) == set(BROKEN)
    for name, word in BROKEN.items():
        assert word.lower() in registry.errors[name].lower(), registry.errors[name]
    with pytest.raises(ApiError) as info:
        registry.get("bad_kind")
    exc = info.value
    assert exc.status == 404 and "failed to load" in exc.message and "kind" in exc.message
    with pytest.raises(ApiError) as info:
        registry.get("nope")
    assert info.value.status == 404 and "unknown model" in info.value.message
    index = {m["name"]: m for m in registry.index()}
    assert set(index) == {"layer_norm_1024", "rms_norm_512", *BROKEN}
    for name in BROKEN:
        assert index[name]["state"] == "UNAVAILABLE"
        assert index[name]["reason"] == registry.errors[name]


def test_a_missing_repository_is_a_model_error(make_context, tmp_path: Path) -> None:
    from normserve.repository import ModelError

    with pytest.raises(ModelError, match="not a directory"):
        make_context(model_repository=str(tmp_path / "absent"))


# --- model control --------------------------------------------------------------------------

def test_explicit_model_control_loads_unloads_and_reloads(make_context, repository: Path) -> None:
    ctx = make_context(model_repository=str(repository),
                       model_control_mode="explicit", load_models=("layer_norm_1024",),
                       admin_token=TOKEN)
    registry, plane = ctx.registry, ctx.dataplane
    assert set(registry.models) == {"layer_norm_1024"}
    x = np.random.default_rng(0).standard_normal((2, 512)).astype(np.float32)

    async def main() -> None:
        await plane.load("rms_norm_512", AUTH)
        model = registry.get("rms_norm_512")
        assert model.ready
        out = await infer(plane, "rms_norm_512", call_of(x))
        assert out.tobytes() == model.layer.apply(x).tobytes()
        # A reload serves a new version; the old one's batcher is closed.
        await plane.load("rms_norm_512", AUTH)
        assert registry.get("rms_norm_512") is not model
        with pytest.raises(Closed):
            await model.batcher.submit(x, 1.0)
        await plane.unload("rms_norm_512", AUTH)
        assert "rms_norm_512" not in registry.models
        index = {m["name"]: m for m in registry.index()}
        assert index["rms_norm_512"]["state"] == "UNAVAILABLE"
        assert index["rms_norm_512"]["reason"] == "unloaded"
        for model in registry.models.values():
            await model.batcher.close()

    asyncio.run(main())


def test_model_control_refusals(make_context, repository: Path) -> None:
    ctx = make_context(model_repository=str(repository),
                       model_control_mode="explicit", load_models=(), admin_token=TOKEN)
    plane = ctx.dataplane
    assert ctx.registry.models == {}

    async def refusal(coro: Any) -> ApiError:
        with pytest.raises(ApiError) as info:
            await coro
        return info.value

    async def main() -> list[ApiError]:
        return [await refusal(plane.load("bad_kind", AUTH)),
                await refusal(plane.load("nope", AUTH)),
                await refusal(plane.unload("layer_norm_1024", AUTH))]

    bad, unknown, not_loaded = asyncio.run(main())
    no_token = asyncio.run(refusal(plane.load("layer_norm_1024", None)))
    assert no_token.status == 401 and "Authorization" in no_token.message
    assert bad.status == 400 and "failed to load" in bad.message and "kind" in bad.message
    assert unknown.status == 404 and "no such folder" in unknown.message
    assert not_loaded.status == 404 and "unknown model" in not_loaded.message
    # Without explicit model control, load and unload are refused outright.
    other = make_context(model_repository=str(repository),
                         admin_token=TOKEN).dataplane
    exc = asyncio.run(refusal(other.load("layer_norm_1024", AUTH)))
    assert exc.status == 400 and "model control mode 'none'" in exc.message


@pytest.mark.parametrize("name", ["..", "."])
def test_load_cannot_reach_outside_the_repository(make_context, repository: Path,
                                                  name: str) -> None:
    """A model folder's files placed in the repository's parent (and its root) must not
    be loadable by naming '..' (or '.')."""
    for folder in (repository.parent, repository):
        for child in (DEMO_REPOSITORY / "rms_norm_512").iterdir():
            shutil.copy(child, folder / child.name)
    ctx = make_context(model_repository=str(repository),
                       model_control_mode="explicit", load_models=(), admin_token=TOKEN)

    async def main() -> ApiError:
        with pytest.raises(ApiError) as info:
            await ctx.dataplane.load(name, AUTH)
        return info.value

    try:
        exc = asyncio.run(main())
    finally:
        served = name in ctx.registry.models
    assert not served
    assert exc.status in (400, 404)


# --- the data plane's refusals -------------------------------------------------------------

def test_queue_full_timeout_and_closing_become_503s_with_their_reason(make_context) -> None:
    """The batcher's QueueFull, TimeoutError and Closed leave the core as ApiError 503s
    (Retry-After, the reason the metrics and gRPC use), counted as the model's failures."""
    ctx = make_context(batch_wait="deadline", max_queue_delay_us=10_000_000,
                       max_queue_size=1)
    plane, name = ctx.dataplane, "layer_norm_1024"
    model = ctx.registry.get(name)
    x = np.random.default_rng(1).standard_normal((1, 1024)).astype(np.float32)

    async def refusal(call: InferCall) -> ApiError:
        with pytest.raises(ApiError) as info:
            await infer(plane, name, call)
        return info.value

    async def main() -> tuple[list[ApiError], np.ndarray]:
        model.batcher.start()
        timeout = await refusal(call_of(x, timeout_s=0.05))  # waits in the 10 s batch
        queued = asyncio.create_task(infer(plane, name, call_of(x)))
        await asyncio.sleep(0)
        rejected = await refusal(call_of(x))
        await model.batcher.close()  # runs the queued request, then refuses
        closed = await refusal(call_of(x))
        return [timeout, rejected, closed], await queued

    (timeout, rejected, closed), out = asyncio.run(main())
    assert out.tobytes() == model.layer.apply(x).tobytes()
    for exc, reason, word in ((timeout, "TIMEOUT", "0.05 s"), (rejected, "REJECTED", "full"),
                              (closed, "UNAVAILABLE", "shutting down")):
        assert exc.status == 503 and exc.reason == reason and word in exc.message
        assert exc.headers == {"Retry-After": "1"}
        assert failures(ctx, name, reason) == 1


def test_a_request_meeting_a_replaced_model_is_answered_by_the_new_one(make_context) -> None:
    """A model replaced while a request is decoded: its old batcher is closed by then, and
    the data plane hands the request to the new version instead of refusing it."""
    ctx = make_context()
    registry, plane, name = ctx.registry, ctx.dataplane, "rms_norm_512"
    old = registry.get(name)
    x = np.random.default_rng(2).standard_normal((3, 512)).astype(np.float32)
    new_layer = prepare("rms_norm", {"weight": np.full(512, 2.0)}, normalized_shape=[512])

    async def main() -> tuple[np.ndarray, Any]:
        old.batcher.start()

        async def decode() -> InferCall:  # the swap happens while this request decodes
            new, replaced = registry.add(name, old.config, new_layer)
            assert replaced is old
            new.batcher.start()
            await old.batcher.close()
            return call_of(x)

        answer = await plane.infer(name, None, decode)
        await registry.get(name).batcher.close()
        return answer.output, answer.model

    out, model = asyncio.run(main())
    assert registry.get(name) is not old
    assert out.tobytes() == new_layer.apply(x).tobytes() != old.layer.apply(x).tobytes()
    # The Answer names the model the request was addressed to (the old object): the same
    # name, which is all the transports and the metrics read from it.
    assert model.name == name


def test_names_versions_and_shapes_are_checked_against_the_model(make_context) -> None:
    ctx = make_context()
    plane = ctx.dataplane
    x = np.zeros((1, 1024), np.float32)
    cases = [("layer_norm_1024", "2", call_of(x), 404, "version"),
             ("nope", None, call_of(x), 404, "unknown model"),
             ("layer_norm_1024", None, call_of(x, model_name="other"), 400, "model_name"),
             ("layer_norm_1024", None, call_of(x, model_version="7"), 400, "model_version"),
             ("layer_norm_1024", None, call_of(np.zeros((1, 8), np.float32)), 400,
              "inputs[0].shape[1]"),
             ("batch_norm_8", None, call_of(np.zeros((1, 7, 2), np.float32)), 400, "shape"),
             ("layer_norm_1024", None, call_of(
                 x, output_region=memoryview(bytearray(100)), output_params={}), 400,
              "shared_memory_byte_size")]
    for name, version, call, status, word in cases:
        with pytest.raises(ApiError) as info:
            asyncio.run(infer(plane, name, call, version))
        assert info.value.status == status and word in info.value.message, info.value.message
    assert failures(ctx, "layer_norm_1024", "BAD_REQUEST") == 4  # the 404s are not counted


def test_an_output_region_receives_the_rows(make_context) -> None:
    """Shared-memory outputs through the whole core: the batch writes the request's rows
    straight into the client's region."""
    ctx = make_context(allow_shared_memory=True)
    plane = ctx.dataplane
    model = ctx.registry.get("layer_norm_1024")
    x = np.random.default_rng(3).standard_normal((2, 1024)).astype(np.float32)
    block = shared_memory.SharedMemory(f"normserve-test-{uuid.uuid4().hex[:12]}", create=True,
                                       size=x.nbytes)
    try:
        plane.shm.register("out", block.name, 0, x.nbytes)
        region = plane.shm.view({"shared_memory_region": "out",
                                 "shared_memory_byte_size": x.nbytes}, "outputs[0]")

        async def main() -> np.ndarray:
            model.batcher.start()
            out = await infer(plane, model.name, call_of(
                x, output_region=region, output_params={"shared_memory_region": "out"}))
            await model.batcher.close()
            return out

        out = asyncio.run(main())
        expected = model.layer.apply(x).tobytes()
        assert bytes(block.buf[:x.nbytes]) == expected and out.tobytes() == expected
        del out
        region.release()
        plane.shm.unregister()
    finally:
        block.close()
        block.unlink()
