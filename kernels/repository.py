"""Model folders (SPEC section 3): ``config.json`` plus ``params.safetensors`` (or ``.npz``).

Loading never unpickles: safetensors has no code path for it and ``.npz`` is read with
``allow_pickle=False``. Every error names the file and the field at fault.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .layers import KINDS, PreparedLayer, prepare

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
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
    return NAME_PATTERN.fullmatch(name) is not None


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
               params: Mapping[str, np.ndarray]) -> Path:
    """Write a model folder as a PyTorch user would: config.json + params.safetensors."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(dict(config), indent=2) + "\n")
    arrays = {k: np.ascontiguousarray(v) for k, v in params.items()}
    save_file(arrays, str(folder / PARAM_FILES[0]))
    return folder


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
