"""Console, exec and the uid cross-check on real QEMU (building-microvm-images.txt).

Three boots: a root dev shell (busybox sh), the seed's rootless dev shell
(/bin/bash from bash-static as uid 1000) and a sealed shell image. The console
is driven as a PTY from here: type a command, read its answer.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time

import anyio
import pytest
import trio

from mvm import Engine, Image, ImageSpec, VmRequest
from mvm.backends.guest.streams import ExecSession
from mvm.engine.base.errors import MvmError
from mvm.engine.builders.offline_image import build_offline_image
from mvm.engine.images.imagespec import Uids
from mvm.engine.vm.uid_check import vm_uid_status

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


def _mvmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _read_until(fd: int, needle: bytes, timeout: float = 60.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, seen
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the console process closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_cli_console_and_status_of_a_detached_rootless_bash_vm() -> None:
    """`mvmctl console VM` on a real terminal: the shell entrypoint's bash, as uid 1000."""
    spec = ImageSpec(name="clish", shell="/bin/bash", uids=Uids(entrypoint=1000), dev=True)
    image = trio.run(build_offline_image, spec)
    up = _mvmctl("up", str(image.directory), "--name", "clish1")
    assert up.returncode == 0, up.stderr
    try:
        status = _mvmctl("status", "clish1")
        assert status.returncode == 0, status.stderr
        assert "uids: agent 990 (ok), entrypoint 1000 (ok)" in status.stdout.splitlines()
        master, slave = os.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "mvm.cli", "console", "clish1"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        try:
            # Type once bash prompts: entering raw mode flushes what was typed before.
            assert b"bash-5" in _read_until(master, b"$ ")
            os.write(master, b'echo "U=$(id -u) B=${BASH_VERSION%%.*}"\n')
            assert b"U=1000 B=5" in _read_until(master, b"U=1000 B=5")
            os.write(master, b"exit 4\n")
            assert b"console of clish1 closed" in _read_until(master, b"closed]")
            assert proc.wait(timeout=60) == 4
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)
    finally:
        down = _mvmctl("down", "clish1")
    assert down.returncode == 0, down.stderr
