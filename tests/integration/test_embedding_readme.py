"""The README's "Embedding the engine" example, pasted into a fresh interpreter, prints
the guest's kernel release and nothing else: no engine log line on stdout or stderr
(issue 16: it printed ~25 structlog lines to stdout)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from mvm import Image

from .conftest import qemu_pids

pytestmark = pytest.mark.qemu

# README.md, "Embedding the engine", verbatim.
EXAMPLE = """\
import trio
from mvm import Engine, PortMapping, VmRequest
from mvm.backends.demo import DEMO_DEV_SPEC


async def main() -> None:
    async with Engine.open() as engine:
        image = await engine.build(DEMO_DEV_SPEC)
        vm = await engine.start(
            VmRequest(
                name="dev", image_dir=str(image.directory), ports=(PortMapping.parse("8080:80"),)
            )
        )
        print((await vm.exec(["uname", "-r"])).stdout.decode(), end="")
    # leaving the block stopped the VM: no process, socket or overlay remains


trio.run(main)  # or asyncio.run(main()): the engine runs on anyio
"""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_the_readme_embedding_example_prints_only_the_kernel_release(
    demo_dev_image: Image,
) -> None:
    if not _port_free(8080):
        pytest.skip("host port 8080 (the example's) is in use on this machine")
    before = qemu_pids()
    proc = subprocess.run(
        [sys.executable, "-P", "-c", EXAMPLE],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.fullmatch(r"\d+\.\d+\S*\n", proc.stdout), proc.stdout[:2000]
    assert proc.stderr == ""
    assert qemu_pids() == before
