"""Model folders (SPEC section 3): ``config.json`` plus ``params.safetensors`` (or ``.npz``).

Loading never unpickles: safetensors has no code path for it and ``.npz`` is read with
``allow_pickle=False``. Every error names the file and the field at fault.

Writes into a repository are durable and all-or-nothing (SPEC 8), on any POSIX filesystem
(NFS included, where there is no atomic directory exchange): a model is written whole into a
hidden staging folder and synced; a journal entry naming the swap is synced; the folder in
place, if any, is moved aside and the staging folder renamed into place; the journal entry
goes. A crash at any point leaves either the old model or the new one: at start,
``recover_repository`` rolls a journalled swap forward and deletes staging folders that never
got one. Nothing a user put in the repository is erased: replaced and removed folders are
moved to ``.removed/`` (the scanner ignores names starting with a dot).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from normserve.kernels import KINDS, PreparedLayer, prepare

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
#: What a model name must be, as error messages say it. A leading dot is refused: "." and ".."
#: are not folders of the repository, and dot-names are its own (staging, .removed, .lock).
NAME_RULE = f"{NAME_PATTERN.pattern}, not starting with '.'"
CONFIG_FILE = "config.json"
PARAM_FILES = ("params.safetensors", "params.npz")


class ModelConfig(BaseModel):
    """config.json: the kind, its hyper-parameters (extra fields) and the batching settings."""

    model_config = ConfigDict(extra="allow", frozen=True)

    kind: str
    input_shape: list[int] | None = None
    max_batch_size: int = Field(default=64, ge=1, le=65536)
    max_queue_delay_us: int = Field(default=500, ge=0, le=10_000_000)
    max_queue_size: int = Field(default=1024, ge=1, le=1_000_000)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        if v not in KINDS:
            raise ValueError(f"must be one of {sorted(KINDS)}")
        return v

    @field_validator("input_shape")
    @classmethod
    def _dims(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(d == 0 or d < -1 for d in v)):
            raise ValueError("must be a non-empty list of positive sizes or -1")
        return v

    @property
    def hyper(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelError(ValueError):
    """A model folder or request body that cannot become a layer; the message names the field."""


def valid_name(name: str) -> bool:
    return NAME_PATTERN.fullmatch(name) is not None and not name.startswith(".")


def parse_config(data: Any, source: str = CONFIG_FILE) -> ModelConfig:
    """Validate a config mapping; errors name the source and the field."""
    if not isinstance(data, Mapping):
        raise ModelError(f"{source}: must be a JSON object")
    try:
        return ModelConfig.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ModelError(f"{source}: field {field}: {first['msg']}") from None


def build_layer(config: ModelConfig, params: Mapping[str, Any], device: str = "cpu",
                source: str = "model") -> PreparedLayer:
    """The prepared layer of a config, with its per-sample shape checked against the kind."""
    try:
        layer = prepare(config.kind, params, device=device, **config.hyper)
        if config.input_shape is not None:
            example = tuple(1 if d == -1 else d for d in config.input_shape)
            layer.output_shape((1, *example))
            layer.sample_shape = tuple(config.input_shape)
        elif layer.sample_shape is None:
            raise ValueError(f"input_shape is required for {config.kind}")
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{source}: {exc}") from None
    return layer


def load_params(folder: Path) -> dict[str, np.ndarray]:
    """The state dict of a model folder, from safetensors (preferred) or an npz archive."""
    for name in PARAM_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                from safetensors.numpy import load_file

                return dict(load_file(str(path)))
            with np.load(path, allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
        except Exception as exc:  # a corrupt file is the folder's error, not a crash
            raise ModelError(f"{path}: cannot read parameters ({exc})") from None
    return {}


def load_model(folder: str | Path, device: str = "cpu") -> tuple[ModelConfig, PreparedLayer]:
    """Load one model folder: its validated config and its prepared layer."""
    folder = Path(folder)
    cfg_path = folder / CONFIG_FILE
    try:
        data = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise ModelError(f"{cfg_path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{cfg_path}: not valid JSON ({exc})") from None
    config = parse_config(data, str(cfg_path))
    layer = build_layer(config, load_params(folder), device, str(folder))
    return config, layer


def save_model(folder: str | Path, config: Mapping[str, Any],
               params: Mapping[str, np.ndarray], sync: bool = False) -> Path:
    """Write a model folder as a PyTorch user would: config.json + params.safetensors
    (flushed to the disk before returning when ``sync``)."""
    from safetensors.numpy import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.ascontiguousarray(v) for k, v in params.items()}
    for name, data in ((CONFIG_FILE, (json.dumps(dict(config), indent=2) + "\n").encode()),
                       (PARAM_FILES[0], save(arrays))):
        with open(folder / name, "wb") as fh:
            fh.write(data)
            if sync:
                fh.flush()
                os.fsync(fh.fileno())
    if sync:
        _sync_dir(folder)
    return folder


# --- durable changes to a repository ------------------------------------------------------
REMOVED_DIR = ".removed"
_STAGING = ".staging-"
_JOURNAL = ".swap-"


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One writer at a time per repository, across processes (workers, replicas on a shared
    volume that supports locks): an exclusive ``flock`` on ``<root>/.lock``."""
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _aside(root: Path, name: str) -> Path:
    """Where a replaced or removed folder goes: ``.removed/<name>.<UTC time>.<id>``."""
    removed = root / REMOVED_DIR
    removed.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return removed / f"{name}.{stamp}.{uuid.uuid4().hex[:8]}"


def write_model(root: str | Path, name: str, config: Mapping[str, Any],
                params: Mapping[str, np.ndarray]) -> Path:
    """Put a model into the repository durably and all-or-nothing (see the module's doc);
    an existing folder of that name is moved to ``.removed/``. OSError when the repository
    cannot be written (read-only, full): then nothing has changed."""
    root = Path(root)
    if not valid_name(name):
        raise ModelError(f"name: {name!r} must match {NAME_RULE}")
    with _locked(root):
        _write_locked(root, name, config, params)
    return root / name


def _write_locked(root: Path, name: str, config: Mapping[str, Any],
                  params: Mapping[str, np.ndarray]) -> None:
    staging = root / f"{_STAGING}{name}.{uuid.uuid4().hex}"
    try:
        save_model(staging, config, params, sync=True)
        _sync_dir(root)
        journal = root / f"{_JOURNAL}{name}"
        with open(journal, "w") as fh:
            fh.write(staging.name)
            fh.flush()
            os.fsync(fh.fileno())
        _sync_dir(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        (root / f"{_JOURNAL}{name}").unlink(missing_ok=True)
        raise
    _complete_swap(root, name, staging, journal)


def _complete_swap(root: Path, name: str, staging: Path, journal: Path) -> None:
    target = root / name
    if target.exists():
        os.rename(target, _aside(root, name))
    os.rename(staging, target)
    _sync_dir(root)
    journal.unlink()
    _sync_dir(root)


def remove_model(root: str | Path, name: str) -> Path:
    """Move a model folder out of the repository (to ``.removed/``), durably; its new path."""
    root = Path(root)
    target = root / name
    with _locked(root):
        if not valid_name(name) or not target.is_dir():
            raise ModelError(f"name: no model folder {name!r} in {root}")
        aside = _aside(root, name)
        os.rename(target, aside)
        _sync_dir(aside.parent)
        _sync_dir(root)
    return aside


def recover_repository(root: str | Path) -> list[str]:
    """Finish or undo what a crash interrupted; what it did, one line each. A journalled swap
    (its staging folder complete and synced) is rolled forward; a staging folder without a
    journal entry was never acknowledged and is deleted."""
    root = Path(root)
    with _locked(root):
        return _recover_locked(root)


def _recover_locked(root: Path) -> list[str]:
    done = []
    for journal in sorted(root.glob(f"{_JOURNAL}*")):
        name = journal.name.removeprefix(_JOURNAL)
        staging = root / journal.read_text().strip()
        if staging.parent == root and staging.name.startswith(_STAGING) and staging.is_dir():
            _complete_swap(root, name, staging, journal)
            done.append(f"{name}: completed an interrupted replacement")
        else:  # the staging folder is gone: the swap finished before the crash
            journal.unlink()
            done.append(f"{name}: removed a finished swap's journal entry")
    for staging in sorted(root.glob(f"{_STAGING}*")):
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            done.append(f"{staging.name}: deleted an unacknowledged partial write")
    return done


def scan_repository(root: str | Path) -> tuple[list[Path], list[str]]:
    """Model folders of a repository, and the names skipped for not matching the pattern."""
    root = Path(root)
    if not root.is_dir():
        raise ModelError(f"{root}: model repository is not a directory")
    folders, skipped = [], []
    for child in sorted(root.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        (folders if valid_name(child.name) else skipped).append(child if valid_name(child.name)
                                                                  else child.name)
    return folders, skipped
