"""The QEMU backend on real parts: the cached microVM kernel, a tiny ext4 rootfs
with a static busybox /init made here, and real QEMU (TCG on hosts whose KVM
does not work). The guest's behaviour is picked per VM with ``mvmtest=MODE`` on
the kernel command line (the kernel hands unknown ``k=v`` arguments to /init as
environment variables)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import anyio
import pytest
import trio

from mvm.backends.abc.types import VmSpec
from mvm.backends.kernel_build import ensure_kernel
from mvm.backends.qemu import QemuBackend, QemuHandle
from mvm.engine.base.errors import ConfigError

from .conftest import qemu_pids

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="needs QEMU"),
]

BOOT_TIMEOUT_S = 60

INIT = r"""#!/bin/busybox sh
export PATH=/bin
busybox echo "MVM-MARKER mode=$mvmtest"
case "$mvmtest" in
poweroff)
    ;;
serial)
    busybox mount -t sysfs sys /sys
    for p in /sys/class/virtio-ports/*; do
        [ "$(busybox cat "$p/name")" = mvm.agent ] && dev=/dev/${p##*/}
    done
    # Blocks until the host connects, like the agent's hello.
    busybox echo "hello-from-guest $dev" > "$dev"
    i=0
    while :; do i=$((i + 1)); busybox echo "tick $i"; busybox sleep 0.1; done
    ;;
esac
busybox poweroff -f
"""


@pytest.fixture(scope="module")
def kernel() -> Path:
    return trio.run(ensure_kernel)


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    busybox = shutil.which("busybox")
    if (
        busybox is None
        or b"statically linked"
        not in subprocess.run(["file", "-L", busybox], capture_output=True, check=False).stdout
    ):
        pytest.skip("needs a static busybox (apt-get install busybox-static)")
    base = tmp_path_factory.mktemp("rootfs")
    tree = base / "tree"
    for d in ("bin", "dev", "proc", "sys"):
        (tree / d).mkdir(parents=True)
    shutil.copy(busybox, tree / "bin" / "busybox")
    (tree / "init").write_text(INIT)
    (tree / "init").chmod(0o755)
    image = base / "rootfs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), "8M"], check=True)
    return image


def _spec(kernel: Path, rootfs: Path, run_dir: Path, mode: str, **kw: object) -> VmSpec:
    return VmSpec(
        name=run_dir.name,
        kernel=kernel,
        rootfs=rootfs,
        run_dir=run_dir,
        memory_mib=128,
        kernel_args=(f"mvmtest={mode}",),
        rootfs_read_only=True,
        **kw,  # type: ignore[arg-type]
    )


def _transient(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.endswith((".sock", ".pid")))


async def _wait_for(path: Path, needle: bytes, timeout: float = BOOT_TIMEOUT_S) -> None:
    with anyio.fail_after(timeout):
        while needle not in (path.read_bytes() if path.exists() else b""):
            await anyio.sleep(0.05)


async def _read_until(stream: anyio.abc.ByteStream, needle: bytes) -> bytes:
    data = b""
    while needle not in data:
        data += await stream.receive()
    return data


async def test_boot_to_marker_and_wait_returns_after_guest_poweroff(
    kernel: Path, rootfs: Path, tmp_path: Path
) -> None:
    before = qemu_pids()
    backend = QemuBackend()
    plan = backend.prepare(_spec(kernel, rootfs, tmp_path / "off", "poweroff"))
    assert plan.accel.value in ("kvm", "tcg")
    handle = await backend.start(plan)
    try:
        assert handle.pid in qemu_pids()
        assert plan.pid_file.read_text().strip() == str(handle.pid)
        with anyio.fail_after(BOOT_TIMEOUT_S):
            status = await backend.wait(handle)
        assert status == 0
        console = plan.console_log.read_text(errors="replace")
        assert "MVM-MARKER mode=poweroff" in console
        assert "reboot: Power down" in console
    finally:
        assert await backend.stop(handle, grace=2) == 0
    assert qemu_pids() == before
    assert _transient(plan.run_dir) == []


async def test_agent_channel_pause_resume_and_stop_leave_nothing(
    kernel: Path, rootfs: Path, tmp_path: Path
) -> None:
    before = qemu_pids()
    backend = QemuBackend()
    plan = backend.prepare(_spec(kernel, rootfs, tmp_path / "run", "serial"))
    handle = await backend.start(plan)
    try:
        assert _transient(plan.run_dir) == ["agent.sock", "qemu.pid", "qmp.sock"]
        with anyio.fail_after(BOOT_TIMEOUT_S):
            stream = await backend.agent_endpoint(plan).connect()
            async with stream:
                greeting = await _read_until(stream, b"\n")
        assert greeting.startswith(b"hello-from-guest /dev/vport")
        await _wait_for(plan.console_log, b"tick 3")

        await backend.pause(handle)
        paused_size = plan.console_log.stat().st_size
        await anyio.sleep(0.6)  # six ticks' worth of time
        assert plan.console_log.stat().st_size == paused_size
        await backend.resume(handle)
        with anyio.fail_after(10):
            while plan.console_log.stat().st_size == paused_size:
                await anyio.sleep(0.05)
    finally:
        t0 = time.monotonic()
        status = await backend.stop(handle, grace=5)
        stop_s = time.monotonic() - t0
    assert status == 0  # QMP quit: QEMU exited by itself, no signal needed
    assert stop_s < 3
    assert qemu_pids() == before
    assert _transient(plan.run_dir) == []


async def test_missing_kernel_is_a_coded_error_and_spawns_nothing(
    kernel: Path, rootfs: Path, tmp_path: Path
) -> None:
    before = qemu_pids()
    backend = QemuBackend()
    with pytest.raises(ConfigError) as err:
        backend.prepare(_spec(tmp_path / "no-vmlinux", rootfs, tmp_path / "a", "poweroff"))
    assert err.value.code == "E_KERNEL_MISSING"
    # A kernel that disappears between prepare and start.
    doomed = tmp_path / "vmlinux"
    shutil.copy(kernel, doomed)
    plan = backend.prepare(_spec(doomed, rootfs, tmp_path / "b", "poweroff"))
    doomed.unlink()
    with pytest.raises(ConfigError) as err:
        await backend.start(plan)
    assert err.value.code == "E_KERNEL_MISSING"
    assert qemu_pids() == before
    assert not plan.run_dir.exists()


async def test_cancelled_start_leaves_no_process(
    kernel: Path, rootfs: Path, tmp_path: Path
) -> None:
    before = qemu_pids()
    backend = QemuBackend()
    plan = backend.prepare(_spec(kernel, rootfs, tmp_path / "c", "serial"))
    handle: QemuHandle | None = None
    with anyio.move_on_after(0.02):
        handle = await backend.start(plan)
    if handle is not None:  # a very fast host: QMP answered within 20 ms
        await backend.stop(handle, grace=1)
    assert qemu_pids() == before
    assert _transient(plan.run_dir) == []


async def test_snapshot_and_restore_continue_the_guest(
    kernel: Path, rootfs: Path, tmp_path: Path
) -> None:
    before = qemu_pids()
    backend = QemuBackend()
    snap = tmp_path / "vm.state"
    plan = backend.prepare(_spec(kernel, rootfs, tmp_path / "src", "serial"))
    handle = await backend.start(plan)
    try:
        with anyio.fail_after(BOOT_TIMEOUT_S):
            async with await backend.agent_endpoint(plan).connect() as stream:
                await _read_until(stream, b"\n")  # unblocks the guest's hello write
        await _wait_for(plan.console_log, b"tick 5")
        await backend.snapshot(handle, snap)
        assert snap.stat().st_size > 1_000_000
        assert not snap.with_name("vm.state.tmp").exists()
        # The source keeps running after the snapshot.
        size = plan.console_log.stat().st_size
        with anyio.fail_after(10):
            while plan.console_log.stat().st_size == size:
                await anyio.sleep(0.05)
    finally:
        await backend.stop(handle, grace=2)

    restored = backend.prepare(_spec(kernel, rootfs, tmp_path / "dst", "serial", incoming=snap))
    assert any(a.startswith("exec:cat ") for a in restored.argv)
    clone = await backend.start(restored)
    try:
        await _wait_for(restored.console_log, b"tick", timeout=30)
        text = restored.console_log.read_text(errors="replace")
        assert "Linux version" not in text  # resumed, not booted
        first = int(text.split("tick ")[1].split()[0])
        assert first > 5
    finally:
        assert await backend.stop(clone, grace=2) == 0
    assert qemu_pids() == before
