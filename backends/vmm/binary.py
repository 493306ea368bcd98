"""Where a VMM's executable is: an explicit path, ``$MVM_<VMM>``, or PATH."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def find_program(env: str, program: str) -> Path | None:
    """``$env`` if set (and only then: a wrong override is not silently replaced),
    else ``program`` on PATH."""
    explicit = os.environ.get(env)
    if explicit:
        path = Path(explicit)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which(program)
    return Path(found) if found else None


def resolve_binary(explicit: Path | None, finder: Callable[[], Path | None]) -> Path | None:
    """A backend's binary: the one it was constructed with if that exists, else found."""
    if explicit is not None:
        return explicit if explicit.is_file() else None
    return finder()
