"""Integration fixtures: real kernel, real images, real QEMU.

Images are built once per session with the offline builder (the kernel comes
from the shared cache; on a fresh machine the first session builds it).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from mvm import Image, ImageSpec
from mvm.backends.demo import DEMO_DEV_SPEC, DEMO_SPEC
from mvm.engine.build import build_offline_image


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
    out = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if cmd.startswith(b"qemu-system") or b"/qemu-system" in cmd.split(b"\0")[0]:
            out.add(int(proc.name))
    return out
