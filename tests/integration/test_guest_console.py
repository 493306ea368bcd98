"""Console, exec and the uid cross-check on real QEMU (building-microvm-images.txt).

Three boots: a root dev shell (busybox sh), the seed's rootless dev shell
(/bin/bash from bash-static as uid 1000) and a sealed shell image. The console
is driven as a PTY from here: type a command, read its answer.
"""

from __future__ import annotations

import re

import anyio
import pytest

from mvm import Engine, Image, ImageSpec, VmRequest
from mvm.backends.guest.streams import ExecSession
from mvm.engine.build import build_offline_image
from mvm.engine.errors import MvmError
from mvm.engine.imagespec import Uids
from mvm.engine.uid_check import vm_uid_status

pytestmark = pytest.mark.qemu


async def _build(spec: ImageSpec) -> Image:
    return await build_offline_image(spec)


async def _type_and_read(proc: ExecSession, text: bytes, pattern: bytes) -> re.Match[bytes]:
    """Send keystrokes, then read PTY output until ``pattern`` matches it."""
    await proc.write(text)
    seen = b""
    with anyio.fail_after(60):
        async for _fd, data in proc.output():
            seen += data
            match = re.search(pattern, seen)
            if match:
                return match
    raise AssertionError(f"console ended before {pattern!r}: {seen!r}")


async def test_dev_shell_console_is_root_and_status_uids_ok() -> None:
    image = await _build(ImageSpec(name="devsh", shell="/bin/sh", dev=True))
    async with Engine.open() as engine:
        vm = await engine.start(VmRequest(name="devsh1", image_dir=str(image.directory)), image)
        client = await vm.agent()
        async with client.open_console(rows=30, cols=100) as proc:
            match = await _type_and_read(
                proc, b"echo U=$(id -u) S=$(stty size)\n", rb"U=(\d+) S=(\d+ \d+)"
            )
            assert match.groups() == (b"0", b"30 100")
            await proc.write(b"exit 5\n")
            async for _ in proc.output():
                pass
        assert proc.exit_code == 5
        # exec in an accessible image runs as the entrypoint's uid too (root in dev).
        result = await vm.exec(["sh", "-c", "id -u; grep NoNewPrivs /proc/self/status"])
        assert result.stdout.split() == [b"0", b"NoNewPrivs:", b"1"]
        line = await vm_uid_status("devsh1")
        assert line == "uids: agent 990 (ok), entrypoint 0 (ok)"


async def test_rootless_bash_dev_shell_console_is_uid_1000() -> None:
    # mkGuest { entrypoint.shell = "/bin/bash"; uids = { entrypoint = 1000; }; } (dev: shell)
    image = await _build(
        ImageSpec(name="rootless", shell="/bin/bash", uids=Uids(entrypoint=1000), dev=True)
    )
    async with Engine.open() as engine:
        vm = await engine.start(VmRequest(name="rootless1", image_dir=str(image.directory)), image)
        client = await vm.agent()
        async with client.open_console() as proc:
            match = await _type_and_read(
                proc,
                b'echo "U=$(id -u) B=${BASH_VERSION%%.*} H=$HOME"\n',
                rb"U=(\d+) B=(\d+) H=(\S+)",
            )
            assert match.groups() == (b"1000", b"5", b"/home/app")
        assert (await vm.exec(["id", "-u"])).stdout == b"1000\n"
        line = await vm_uid_status("rootless1")
        assert line == "uids: agent 990 (ok), entrypoint 1000 (ok)"


async def test_sealed_shell_image_refuses_console() -> None:
    # mkGuest { entrypoint.shell = "/bin/bash"; dev = false; ... }
    image = await _build(ImageSpec(name="sealedsh", shell="/bin/bash", dev=False))
    async with Engine.open() as engine:
        vm = await engine.start(VmRequest(name="sealedsh1", image_dir=str(image.directory)), image)
        assert vm.hello["sealed"] is True
        client = await vm.agent()
        with pytest.raises(MvmError) as info:
            async with client.open_console():
                pass
        assert info.value.code == "E_SEALED"
        line = await vm_uid_status("sealedsh1")
        assert line == "uids: agent 990 (ok), entrypoint 1000 (ok)"
