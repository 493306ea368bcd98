"""A throwaway ``$MVM_HOME`` for one benchmark run.

Benchmarks start and stop dozens of VMs (``bench0..N``, ``s0..N``, clones, a
snapshot). In the user's home they stayed behind as exited rows in ``mvmctl ls``
and a snapshot in ``mvmctl snapshot ls`` (issue 13): the modules only picked a
temporary home when ``$MVM_HOME`` was unset. The run now always gets its own home,
which is removed afterwards, also on failure and Ctrl-C (cancellation unwinds
through the ``finally``). The artifact cache (``$MVM_CACHE``: kernel, images) is
not in the home, so nothing expensive is rebuilt.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs

from mvm.engine.base.settings import current_settings, use_settings


@contextmanager
def throwaway_home(prefix: str = "mvmbench-") -> Iterator[Path]:
    """Point ``$MVM_HOME`` at a fresh private directory under /tmp (short: Unix socket
    paths must stay under 108 bytes), restore the caller's value and delete it after."""
    home = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    previous = os.environ.get("MVM_HOME")
    os.environ["MVM_HOME"] = str(home)  # for the processes a benchmark spawns itself
    try:
        # and for the engine: the CLI installed its Settings before the bench started
        with use_settings(attrs.evolve(current_settings(), home=home)):
            yield home
    finally:
        if previous is None:
            os.environ.pop("MVM_HOME", None)
        else:
            os.environ["MVM_HOME"] = previous
        shutil.rmtree(home, ignore_errors=True)
