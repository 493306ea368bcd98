"""Where mvm keeps things on the host.

``$MVM_HOME`` (default ``~/.mvm``) holds state that belongs to this user's VMs:
the SQLite database, per-VM run directories, keys. ``$MVM_CACHE`` (default
``$XDG_CACHE_HOME/mvm`` or ``~/.cache/mvm``) holds content-addressed artifacts
that can be rebuilt at any time (kernels, agents, images) and is shared by
every checkout, so CI and fresh clones reuse the slow kernel build.
"""

from __future__ import annotations

import os
from pathlib import Path


def mvm_home() -> Path:
    return Path(os.environ.get("MVM_HOME") or Path.home() / ".mvm")


def cache_dir() -> Path:
    explicit = os.environ.get("MVM_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "mvm"


def vm_dir(name: str) -> Path:
    return mvm_home() / "vms" / name


def db_path() -> Path:
    return mvm_home() / "state.db"
