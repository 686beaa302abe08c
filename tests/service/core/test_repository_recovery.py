"""Recovery of interrupted repository writes (the states a crash can leave), and writes and
removals that keep what a user put in the repository: ``normserve.repository`` alone, no
server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from service_repository_cases import rms_config

from normserve.repository import (
    REMOVED_DIR,
    load_model,
    recover_repository,
    remove_model,
    save_model,
    write_model,
)


def test_recovery_rolls_a_journalled_swap_forward(tmp_path):
    save_model(tmp_path / "m", rms_config(4), {"weight": np.ones(4, np.float32)})
    staging = tmp_path / ".staging-m.abc"
    save_model(staging, rms_config(4), {"weight": np.full(4, 2.0, np.float32)})
    (tmp_path / ".swap-m").write_text(staging.name)
    assert recover_repository(tmp_path) == ["m: completed an interrupted replacement"]
    assert load_model(tmp_path / "m")[1].params["weight"][0] == 2.0
    assert not staging.exists() and not (tmp_path / ".swap-m").exists()
    (old,) = (tmp_path / REMOVED_DIR).iterdir()
    assert load_model(old)[1].params["weight"][0] == 1.0


def test_recovery_after_the_old_folder_moved_aside(tmp_path):
    staging = tmp_path / ".staging-m.abc"  # crash between the two renames
    save_model(staging, rms_config(4), {"weight": np.full(4, 2.0, np.float32)})
    (tmp_path / ".swap-m").write_text(staging.name)
    recover_repository(tmp_path)
    assert load_model(tmp_path / "m")[1].params["weight"][0] == 2.0


def test_recovery_discards_unjournalled_writes(tmp_path):
    save_model(tmp_path / "m", rms_config(4), {"weight": np.ones(4, np.float32)})
    partial = tmp_path / ".staging-m.abc"
    partial.mkdir()
    (partial / "config.json").write_text('{"kind": "rms_n')  # cut short
    (tmp_path / ".swap-x").write_text(".staging-x.gone")  # a finished swap's stale entry
    done = recover_repository(tmp_path)
    assert not partial.exists() and not (tmp_path / ".swap-x").exists()
    assert len(done) == 2
    assert load_model(tmp_path / "m")[1].params["weight"][0] == 1.0


def test_write_and_remove_keep_the_users_folders(tmp_path):
    save_model(tmp_path / "mine", rms_config(4), {"weight": np.ones(4, np.float32)})
    (tmp_path / "mine" / "NOTES.txt").write_text("my own notes")
    write_model(tmp_path, "mine", rms_config(4), {"weight": np.full(4, 3.0, np.float32)})
    (old,) = (tmp_path / REMOVED_DIR).iterdir()
    assert (old / "NOTES.txt").read_text() == "my own notes"
    aside = remove_model(tmp_path, "mine")
    assert aside.parent.name == REMOVED_DIR and json.loads(
        (aside / "config.json").read_text())["kind"] == "rms_norm"
    assert not (tmp_path / "mine").exists()
    assert sorted(p.name for p in Path(tmp_path).iterdir() if not p.name.startswith(".")) == []
    shutil.rmtree(tmp_path / REMOVED_DIR)
