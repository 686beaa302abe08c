"""Triton's logging extension (SPEC 7): read and change the server's log settings at run time.

The settings are Triton's (``log_info``, ``log_warning``, ``log_error``, ``log_verbose_level``,
``log_format``, ``log_file``) mapped onto Python logging: the most verbose level switched on
becomes the level of normserve's and uvicorn's loggers. ``log_file`` and ``log_format`` other
than the current ones are refused: logs go where the process's handlers send them.
"""

from __future__ import annotations

import logging
from typing import Any

from ..core.errors import InvalidInput

LOGGERS = ("normserve", "uvicorn", "uvicorn.error", "uvicorn.access")
_BOOLS = ("log_info", "log_warning", "log_error")


class LogSettings:
    """The current settings, applied to the loggers on every change."""

    def __init__(self) -> None:
        level = logging.getLogger("normserve").getEffectiveLevel()
        self.values: dict[str, Any] = {
            "log_file": "", "log_format": "default",
            "log_info": level <= logging.INFO, "log_warning": level <= logging.WARNING,
            "log_error": level <= logging.ERROR,
            "log_verbose_level": 1 if level <= logging.DEBUG else 0,
        }

    def get(self) -> dict[str, Any]:
        return dict(self.values)

    def update(self, changes: Any) -> dict[str, Any]:
        """Check every change first (a 400 naming the setting), then apply them together."""
        if not isinstance(changes, dict):
            raise InvalidInput("body: must be a JSON object of log settings")
        new = dict(self.values)
        for key, value in changes.items():
            if key in _BOOLS:
                if not isinstance(value, bool):
                    raise InvalidInput(f"{key}: must be true or false")
            elif key == "log_verbose_level":
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise InvalidInput(f"{key}: must be an integer >= 0")
            elif key in ("log_file", "log_format"):
                if value != self.values[key]:
                    raise InvalidInput(f"{key}: cannot be changed at run time (it is "
                                       f"{self.values[key]!r})")
            else:
                raise InvalidInput(f"{key}: unknown log setting; known are "
                                   f"{', '.join(sorted(self.values))}")
            new[key] = value
        self.values = new
        for name in LOGGERS:
            logging.getLogger(name).setLevel(self.level())
        return self.get()

    def level(self) -> int:
        v = self.values
        if v["log_verbose_level"] > 0:
            return logging.DEBUG
        for key, level in (("log_info", logging.INFO), ("log_warning", logging.WARNING),
                           ("log_error", logging.ERROR)):
            if v[key]:
                return level
        return logging.CRITICAL
