"""Shared fixtures.

Every test gets its own short ``$MVM_HOME`` under /tmp (Unix socket paths must
stay under 108 bytes). The artifact cache (``$MVM_CACHE``) is shared and
persistent so the kernel is built once per machine, as for users.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def mvm_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="mvmt-", dir="/tmp"))
    monkeypatch.setenv("MVM_HOME", str(home))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _session_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tell leak checks which temp root is this session's (see qemu_pids)."""
    os.environ["MVM_TEST_BASETEMP"] = str(tmp_path_factory.getbasetemp())
    yield
    os.environ.pop("MVM_TEST_BASETEMP", None)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MVM_LOG_LEVEL", "warning")
