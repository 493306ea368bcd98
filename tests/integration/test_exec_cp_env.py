"""exec flags, cp and the runtime environment on real QEMU (issue 16).

One detached demo-dev VM (``mvmctl up ... -e ... --env-file``) serves every test:
exit statuses, -i/-t/-w/-u/-e of exec, ``cp`` of a 50 MiB file and of a tree with
modes both ways, and the runtime variables as exec and the ``web`` service see them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvm import Image

pytestmark = pytest.mark.qemu

MVMCTL = [sys.executable, "-m", "mvm.cli"]
VM = "xc"
# One VM for the module, so one $MVM_HOME for it (conftest gives each test its own).
_HOME: dict[str, str] = {}


def mvmctl(
    *args: str, stdin: bytes | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, **_HOME}
    return subprocess.run(
        [*MVMCTL, *args], input=stdin, capture_output=True, timeout=timeout, check=False, env=env
    )


def sh(script: str, *flags: str) -> subprocess.CompletedProcess[bytes]:
    return mvmctl("exec", *flags, VM, "--", "sh", "-c", script)


@pytest.fixture(scope="module")
def vm(demo_dev_image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tempfile.mkdtemp(prefix="mvmx-", dir="/tmp")
    _HOME["MVM_HOME"] = home
    env_file = tmp_path_factory.mktemp("env") / "app.env"
    env_file.write_text(
        "# runtime settings\n"
        "\n"
        'FROM_FILE="quoted value"\n'
        "export SINGLE='$NOT_EXPANDED'\n"
        "GREETING=overridden by -e\n"
    )
    up = mvmctl(
        "up", "demo-dev", "--name", VM, "--env-file", str(env_file), "-e", "GREETING=hello world"
    )
    assert up.returncode == 0, up.stderr.decode()
    try:
        yield VM
    finally:
        down = mvmctl("down", VM)
        _HOME.clear()
        shutil.rmtree(home, ignore_errors=True)
        assert down.returncode == 0, down.stderr.decode()


def test_exit_statuses_are_the_commands(vm: str) -> None:
    assert mvmctl("exec", vm, "--", "true").returncode == 0
    assert mvmctl("exec", vm, "--", "false").returncode == 1
    assert sh("exit 7").returncode == 7
    assert sh("kill -9 $$").returncode == 128 + 9
    assert sh("kill -INT $$").returncode == 130
    missing = mvmctl("exec", vm, "--", "/no/such/program")
    assert missing.returncode == 127
    assert missing.stderr.startswith(b"error[E_EXEC]: /no/such/program: No such file")


def test_workdir_env_stdin_tty_and_user(vm: str) -> None:
    assert sh("pwd", "-w", "/srv/www").stdout == b"/srv/www\n"
    out = sh('echo "$ONE|$GREETING"', "-e", "ONE=1")
    assert out.stdout == b"1|hello world\n", out.stderr
    piped = mvmctl("exec", "-i", vm, "--", "tr", "a-z", "A-Z", stdin=b"stdin reaches the guest\n")
    assert piped.returncode == 0 and piped.stdout == b"STDIN REACHES THE GUEST\n"
    tty = mvmctl("exec", "-t", vm, "--", "tty")
    assert tty.returncode == 0 and tty.stdout.startswith(b"/dev/pts/"), tty
    user = mvmctl("exec", "-u", "1234:2345", vm, "--", "sh", "-c", "echo $(id -u) $(id -g) $HOME")
    assert user.stdout == b"1234 2345 /\n", user.stderr
    root = mvmctl("exec", "-u", "root", vm, "--", "sh", "-c", "echo $(id -u) $HOME")
    assert root.stdout == b"0 /root\n", root.stderr
    nobody = mvmctl("exec", "-u", "nobody", vm, "--", "sh", "-c", "echo $(id -u) $(id -un)")
    assert nobody.stdout == b"65534 nobody\n", nobody.stderr
    ghost = mvmctl("exec", "-u", "ghost", vm, "--", "true")
    assert ghost.returncode != 0 and ghost.stderr.startswith(b"error[E_EXEC_USER_UNKNOWN]")


def _read_until(fd: int, pattern: bytes, timeout: float = 60) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while pattern not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            seen += os.read(fd, 4096)
    return seen


def _winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def test_exec_it_is_a_terminal_that_follows_resizes(vm: str) -> None:
    master, slave = pty.openpty()
    _winsize(slave, 30, 100)
    proc = subprocess.Popen(
        [*MVMCTL, "exec", "-it", vm, "--", "sh"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, **_HOME},
        start_new_session=True,
    )
    os.close(slave)
    try:
        os.write(master, b"echo S=$(stty size)\n")
        _read_until(master, b"S=30 100")
        _winsize(master, 40, 120)
        proc.send_signal(signal.SIGWINCH)
        deadline = time.monotonic() + 30
        while True:  # the resize races the next command: ask until it shows
            os.write(master, b"echo S=$(stty size)\n")
            seen = _read_until(master, b"S=", 30)
            seen += _read_until(master, b"\n", 30)
            if b"S=40 120" in seen:
                break
            assert time.monotonic() < deadline, seen
        os.write(master, b"exit 3\n")
        assert proc.wait(timeout=60) == 3
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_runtime_env_reaches_exec_and_the_service(vm: str) -> None:
    out = sh('echo "$GREETING|$FROM_FILE|$SINGLE"')
    assert out.stdout == b"hello world|quoted value|$NOT_EXPANDED\n", out.stderr
    service = sh(
        "tr '\\0' '\\n' </proc/$(cat /run/mvm/services/web.pid)/environ"
        " | grep -E '^(GREETING|FROM_FILE)='"
    )
    assert sorted(service.stdout.decode().splitlines()) == [
        "FROM_FILE=quoted value",
        "GREETING=hello world",
    ], service.stderr


def test_cp_50_mib_byte_exact_both_ways(vm: str, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(50 * 1024 * 1024))
    digest = hashlib.sha256(big.read_bytes()).hexdigest()
    put = mvmctl("cp", str(big), f"{vm}:/tmp/big.bin")
    assert put.returncode == 0, put.stderr.decode()
    assert sh("sha256sum /tmp/big.bin").stdout.split()[0].decode() == digest
    back = tmp_path / "back.bin"
    get = mvmctl("cp", f"{vm}:/tmp/big.bin", str(back))
    assert get.returncode == 0, get.stderr.decode()
    assert hashlib.sha256(back.read_bytes()).hexdigest() == digest


def test_cp_tree_keeps_modes(vm: str, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub" / "deep").mkdir(parents=True)
    files = {
        "run.sh": (b"#!/bin/sh\necho hi\n", 0o750),
        "secret": (b"s3cret", 0o600),
        "sub/readme": (b"read me\n", 0o644),
        "sub/deep/x": (b"x" * 70000, 0o755),
    }
    for rel, (body, mode) in files.items():
        (tree / rel).write_bytes(body)
        (tree / rel).chmod(mode)
    (tree / "sub").chmod(0o711)
    put = mvmctl("cp", str(tree), f"{vm}:/tmp")
    assert put.returncode == 0, put.stderr.decode()
    modes = sh("cd /tmp/tree && stat -c '%a %n' run.sh secret sub sub/readme sub/deep/x")
    assert modes.stdout.decode().split("\n")[:-1] == [
        "750 run.sh",
        "600 secret",
        "711 sub",
        "644 sub/readme",
        "755 sub/deep/x",
    ], modes.stderr
    assert sh("/tmp/tree/run.sh").stdout == b"hi\n"
    back = tmp_path / "copy"
    get = mvmctl("cp", f"{vm}:/tmp/tree", str(back))
    assert get.returncode == 0, get.stderr.decode()
    for rel, (body, mode) in files.items():
        assert (back / rel).read_bytes() == body
        assert stat.S_IMODE((back / rel).stat().st_mode) == mode, rel
    assert stat.S_IMODE((back / "sub").stat().st_mode) == 0o711
    missing = mvmctl("cp", f"{vm}:/tmp/nope", str(tmp_path / "n"))
    assert missing.returncode != 0 and missing.stderr.startswith(b"error[E_CP_SOURCE]")


async def test_library_streaming_exec_files_and_env(demo_dev_image: Image, tmp_path: Path) -> None:
    from mvm import Engine, ExecSession, FileEntry, VmRequest

    request = VmRequest(
        name="xlib", image_dir=str(demo_dev_image.directory), env={"LIB_VAR": "from the library"}
    )
    async with Engine.open() as engine:
        vm = await engine.start(request, demo_dev_image)
        seen = await vm.exec(["sh", "-c", 'echo "$LIB_VAR $X"; pwd'], env={"X": "y"}, cwd="/tmp")
        assert seen.stdout == b"from the library y\n/tmp\n"
        chunks: list[bytes] = []
        proc: ExecSession
        async with vm.open_exec(["tr", "a-z", "A-Z"], stdin=True) as proc:
            await proc.write(b"first ")
            await proc.write(b"second\n")
            await proc.close_stdin()
            async for fd, data in proc.output():
                assert fd == 1
                chunks.append(data)
        assert b"".join(chunks) == b"FIRST SECOND\n" and proc.exit_code == 0
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "f.txt").write_bytes(b"payload")
        (tmp_path / "d" / "f.txt").chmod(0o640)
        assert await vm.files.put(tmp_path / "d", "/tmp") == "/tmp/d"
        entries = await vm.files.list("/tmp/d")
        assert entries == [
            FileEntry(path="/tmp/d/f.txt", size=7, mode=0o100640, mtime=entries[0].mtime)
        ]
        got = await vm.files.get("/tmp/d/f.txt", tmp_path / "copy.txt")
        assert got.read_bytes() == b"payload"


async def test_sealed_image_refuses_files_and_exec(demo_image: Image) -> None:
    from mvm import AccessDenied, Engine, VmRequest

    async with Engine.open() as engine:
        vm = await engine.start(
            VmRequest(name="xsealed", image_dir=str(demo_image.directory)), demo_image
        )
        with pytest.raises(AccessDenied) as info:
            await vm.files.put(Path("/etc/hostname"), "/tmp")
        assert info.value.code == "E_SEALED"
        with pytest.raises(AccessDenied):
            async with vm.open_exec(["true"]):
                pass
    sealed = await _cli_cp_on_sealed(demo_image)
    assert sealed.startswith(b"error[E_SEALED]"), sealed


async def _cli_cp_on_sealed(demo_image: Image) -> bytes:
    """``mvmctl cp`` against a detached sealed VM: refused before any transfer."""
    import anyio

    def run() -> bytes:
        up = subprocess.run(
            [*MVMCTL, "up", "demo", "--name", "xs2"], capture_output=True, check=False, timeout=300
        )
        assert up.returncode == 0, up.stderr
        try:
            cp = subprocess.run(
                [*MVMCTL, "cp", "/etc/hostname", "xs2:/tmp"],
                capture_output=True,
                check=False,
                timeout=60,
            )
            return cp.stderr
        finally:
            subprocess.run([*MVMCTL, "down", "xs2"], capture_output=True, check=False, timeout=120)

    return await anyio.to_thread.run_sync(run)


async def test_user_switch_is_refused_when_exec_is_not_root() -> None:
    from mvm import AccessDenied, Engine, ImageSpec, Uids, VmRequest
    from mvm.backends.guest.exec_user import exec_as
    from mvm.engine.builders.offline_image import build_offline_image

    image = await build_offline_image(
        ImageSpec(name="rootless-x", shell="/bin/sh", uids=Uids(entrypoint=1000), dev=True)
    )
    async with Engine.open() as engine:
        vm = await engine.start(VmRequest(name="xrootless", image_dir=str(image.directory)), image)
        client = await vm.agent()
        with pytest.raises(AccessDenied) as info:
            await exec_as(client, "root", ["id", "-u"], {})
        assert info.value.code == "E_EXEC_USER"
        assert "entrypoint uid 1000" in info.value.message
        argv, env = await exec_as(client, "app", ["id", "-u"], {})
        assert argv == ["id", "-u"]
        assert (await client.exec(argv, env=env)).stdout == b"1000\n"
