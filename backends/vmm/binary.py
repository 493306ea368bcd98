"""Where a VMM's executable is: an explicit path, ``$MVM_<VMM>`` (``Settings.binaries``),
or PATH."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from mvm.engine.base.settings import current_settings


def binary_override(program: str) -> Path | None:
    """The path the settings name for ``program`` (``$MVM_FIRECRACKER``, ...), if any."""
    return current_settings().binaries.get(program)


def find_program(program: str) -> Path | None:
    """The settings' override for ``program`` if set (and only then: a wrong override is
    not silently replaced), else ``program`` on PATH."""
    path = binary_override(program)
    if path is not None:
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which(program)
    return Path(found) if found else None


def resolve_binary(explicit: Path | None, finder: Callable[[], Path | None]) -> Path | None:
    """A backend's binary: the one it was constructed with if that exists, else found."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    return finder()
