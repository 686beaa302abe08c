"""What tells a model folder replaced or edited from the one loaded (poll mode reloads it)."""

from __future__ import annotations

from pathlib import Path


def fingerprint(folder: Path) -> tuple:
    """The folder's inode (our writes rename a new folder in) and each file's inode, size
    and modification time; ``()`` when the folder cannot be read."""
    try:
        parts = [folder.stat().st_ino]
        for child in sorted(folder.iterdir()):
            st = child.stat()
            parts.append((child.name, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(parts)
    except OSError:
        return ()
