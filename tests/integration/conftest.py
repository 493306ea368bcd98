"""Integration fixtures: real kernel, real images, real QEMU.

Images are built once per session with the offline builder (the kernel comes
from the shared cache; on a fresh machine the first session builds it).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from mvm import Image, ImageSpec
from mvm.backends.demo import DEMO_DEV_SPEC, DEMO_SPEC
from mvm.engine.builders.offline_image import build_offline_image


def _build(spec: ImageSpec) -> Image:
    return trio.run(build_offline_image, spec)


@pytest.fixture(scope="session")
def demo_image() -> Image:
    return _build(DEMO_SPEC)


@pytest.fixture(scope="session")
def demo_dev_image() -> Image:
    return _build(DEMO_DEV_SPEC)


@pytest.fixture
def free_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


def qemu_pids() -> set[int]:
    """QEMU processes of this test session: their command line names a path under the
    test's ``$MVM_HOME`` or pytest's temp root (every run dir, drive and socket lives
    there). QEMUs that other sessions on the host start meanwhile are not ours to count."""
    mine = [
        os.environ[var].encode() for var in ("MVM_HOME", "MVM_TEST_BASETEMP") if os.environ.get(var)
    ]
    out = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        is_qemu = cmd.startswith(b"qemu-system") or b"/qemu-system" in cmd.split(b"\0")[0]
        if is_qemu and any(path in cmd for path in mine):
            out.add(int(proc.name))
    return out
