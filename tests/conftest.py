"""Shared fixtures.

Every test gets its own short ``$MVM_HOME`` under /tmp (Unix socket paths must
stay under 108 bytes). The artifact cache (``$MVM_CACHE``) is shared and
persistent so the kernel is built once per machine, as for users.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def mvm_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="mvmt-", dir="/tmp"))
    monkeypatch.setenv("MVM_HOME", str(home))
    yield home
    _kill_what_the_test_left(home)
    shutil.rmtree(home, ignore_errors=True)


def _kill_what_the_test_left(home: Path) -> None:
    """A test that failed midway (or killed its CLI with SIGKILL) can leave VMMs and
    supervisors behind; once the home is deleted no reconciler can find them, and a
    stray TCG guest then eats a core for the rest of the run. Kill them by their tags
    (MVM_VMM_RUN_DIR under this home; a shim's MVM_HOME) and say so."""
    vmm_tag = f"MVM_VMM_RUN_DIR={home}/".encode()
    shim_tag = f"MVM_HOME={home}\0".encode()
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes() + b"\0"
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if vmm_tag in environ or (shim_tag in environ and b"mvm.engine.shim" in cmdline):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(entry.name), signal.SIGKILL)
            left.append(int(entry.name))
    if left:
        warnings.warn(f"killed processes a test left running: {left}", stacklevel=1)


@pytest.fixture(autouse=True, scope="session")
def _session_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tell leak checks which temp root is this session's (see qemu_pids)."""
    os.environ["MVM_TEST_BASETEMP"] = str(tmp_path_factory.getbasetemp())
    yield
    os.environ.pop("MVM_TEST_BASETEMP", None)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MVM_LOG_LEVEL", "warning")
