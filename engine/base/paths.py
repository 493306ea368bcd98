"""Where mvm keeps things on the host.

``$MVM_HOME`` (default ``~/.mvm``) holds state that belongs to this user's VMs:
the SQLite database, per-VM run directories, keys. ``$MVM_CACHE`` (default
``$XDG_CACHE_HOME/mvm`` or ``~/.cache/mvm``) holds content-addressed artifacts
that can be rebuilt at any time (kernels, agents, images) and is shared by
every checkout, so CI and fresh clones reuse the slow kernel build. Both come
from the current :class:`~mvm.engine.base.settings.Settings` (read once at the edge).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from mvm.engine.base.settings import current_settings


def mvm_home() -> Path:
    return current_settings().home


def cache_dir() -> Path:
    return current_settings().cache


def vm_dir(name: str) -> Path:
    return mvm_home() / "vms" / name


def db_path() -> Path:
    return mvm_home() / "state.db"


def make_private_dirs(directory: Path) -> Path:
    """Create ``directory`` and its missing parents 0700 (mkdir's mode is masked by
    the umask, so each one is chmodded): the home names VMs, sockets, pids and holds
    console logs and plans, which no other local user may read. Raises OSError."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)
    return directory


def home_error(path: Path, exc: OSError) -> Exception:
    """The one coded line for an ``OSError`` met while writing under ``$MVM_HOME``."""
    from mvm.engine.base.errors import StateError

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StateError(
            f"no space left writing {path}",
            code="E_DISK_FULL",
            hint="free some disk space, or point MVM_HOME at a larger filesystem",
        )
    return StateError(
        f"cannot write {path}: {exc.strerror or exc}",
        code="E_HOME_UNWRITABLE",
        hint="check the permissions of MVM_HOME, or point MVM_HOME at a writable directory",
    )


def ensure_home(home: Path | None = None) -> Path:
    """``$MVM_HOME`` created 0700 whoever creates it first (doctor, audit verify, up);
    an unwritable home is one coded StateError (E_HOME_UNWRITABLE / E_DISK_FULL)."""
    root = home if home is not None else mvm_home()
    try:
        make_private_dirs(root)
    except OSError as exc:
        raise home_error(root, exc) from None
    return root


def ensure_private_dir(directory: Path) -> Path:
    """A directory under the home (e.g. a VM's run directory), created 0700; coded
    errors as for :func:`ensure_home`."""
    try:
        return make_private_dirs(directory)
    except OSError as exc:
        raise home_error(directory, exc) from None


def private_opener(path: str, flags: int) -> int:
    """``open(..., opener=private_opener)``: a new file is 0600 whatever the umask."""
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def write_private(path: Path, text: str) -> None:
    """Write a small text file under the home (plans, mode.json), mode 0600."""
    with open(path, "w", encoding="utf-8", opener=private_opener) as fh:
        fh.write(text)


# Passed as ``umask=`` to the VMM / agent / shim processes: what they create under the
# home (console logs, pid files, sockets, overlays) is private too.
CHILD_UMASK = 0o077
