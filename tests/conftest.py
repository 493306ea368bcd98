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


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("MVM_LOG_LEVEL", "warning")
