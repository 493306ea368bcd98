"""Day-to-day lifecycle on real QEMU through mvmctl: detached VMs outliving the CLI,
re-adoption after the supervisor is SIGKILLed, down of a VM whose VMM was killed,
exec/console gates, detach of an attached VM, and a leak count over 5 VMs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from mvm import Image

from .conftest import qemu_pids
from .test_cli import MVMCTL, _fetch, mvmctl, spawn_run

pytestmark = pytest.mark.qemu


def _row(name: str) -> dict[str, object]:
    rows = json.loads(mvmctl("ls", "--json").stdout)
    (row,) = [r for r in rows if r["name"] == name]
    return dict(row)


def _owner_pid(name: str) -> int:
    return int(str(_row(name)["supervisor_pid"]))


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _resources() -> dict[str, object]:
    home = Path(os.environ["MVM_HOME"])
    socks = sorted(str(p) for p in home.rglob("*.sock"))
    disks = sorted(str(p) for p in home.rglob("*.overlay"))
    taps = sorted(p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith("mvmt"))
    return {"qemu": qemu_pids(), "sockets": socks, "disks": disks, "taps": taps}


def test_detached_vm_survives_cli_and_is_readopted_after_sigkill(
    demo_image: Image, free_port: int
) -> None:
    before = qemu_pids()
    up = mvmctl("up", "demo", "--name", "keep", "-p", f"{free_port}:80")
    assert up.returncode == 0, up.stderr
    try:
        # The CLI process has exited; the VM and its forward keep serving.
        assert "Hello from mvm" in _fetch(free_port)
        shim = _owner_pid("keep")
        vmm = int(str(_row("keep")["pid"]))
        os.kill(shim, signal.SIGKILL)
        _wait_gone(shim)
        assert Path(f"/proc/{vmm}").exists(), "the VMM must survive its supervisor"
        # Any engine that opens re-adopts it: a new shim rebinds the forward.
        row = _row("keep")
        assert row["state"] == "running"
        new_shim = _owner_pid("keep")
        assert new_shim != shim and Path(f"/proc/{new_shim}").exists()
        assert int(str(row["pid"])) == vmm
        assert "Hello from mvm" in _fetch(free_port)
    finally:
        down = mvmctl("down", "keep")
    assert down.returncode == 0, down.stderr
    assert qemu_pids() == before


def test_down_of_a_vm_whose_vmm_was_killed(demo_image: Image) -> None:
    before = qemu_pids()
    assert mvmctl("up", "demo", "--name", "victim").returncode == 0
    vmm = int(str(_row("victim")["pid"]))
    os.kill(vmm, signal.SIGKILL)
    _wait_gone(vmm)
    down = mvmctl("down", "victim")
    assert down.returncode == 0, down.stderr
    assert qemu_pids() == before
    assert not (Path(os.environ["MVM_HOME"]) / "vms" / "victim").exists()
    gone = mvmctl("status", "victim")
    assert gone.returncode != 0 and gone.stderr.startswith("error[E_VM_NOT_FOUND]")


def test_exec_console_gates(demo_image: Image, demo_dev_image: Image) -> None:
    assert mvmctl("up", "demo", "--name", "sealed1").returncode == 0
    assert mvmctl("up", "demo-dev", "--name", "dev2").returncode == 0
    try:
        refused = mvmctl("exec", "sealed1", "--", "id")
        assert refused.returncode != 0 and refused.stderr.startswith("error[E_SEALED]")
        refused = mvmctl("console", "sealed1")
        assert refused.returncode != 0 and refused.stderr.startswith("error[E_SEALED]")
        ran = mvmctl("exec", "dev2", "--", "sh", "-c", "echo $((6*7)); exit 4")
        assert ran.returncode == 4 and ran.stdout == "42\n"
        console = subprocess.run(
            [*MVMCTL, "console", "dev2"],
            input="echo console-$((1+1))\nexit 0\n",
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "console-2" in console.stdout, console.stdout + console.stderr
        health = mvmctl("health", "dev2")
        assert "web" in health.stdout
    finally:
        mvmctl("down", "sealed1", "dev2")


def test_detach_hands_an_attached_vm_to_a_supervisor(demo_image: Image, free_port: int) -> None:
    before = qemu_pids()
    proc = spawn_run("att2", free_port)
    try:
        assert proc.stderr is not None
        assert "att2: ready" in proc.stderr.readline()
        vmm = int(str(_row("att2")["pid"]))
        detach = mvmctl("detach", "att2")
        assert detach.returncode == 0, detach.stderr
        assert proc.wait(timeout=60) == 0
        row = _row("att2")
        assert row["mode"] == "detached" and row["state"] == "running"
        assert int(str(row["pid"])) == vmm
        assert "Hello from mvm" in _fetch(free_port)
        mode = json.loads((Path(os.environ["MVM_HOME"]) / "vms" / "att2" / "mode.json").read_text())
        assert mode["mode"] == "detached"
    finally:
        if proc.poll() is None:
            proc.kill()
        mvmctl("down", "att2")
    assert qemu_pids() == before


def test_five_vm_cycle_leaks_nothing(demo_image: Image) -> None:
    before = _resources()
    names = [f"cyc{i}" for i in range(5)]
    ports = []
    for name in names:
        up = mvmctl("up", "demo", "--name", name)
        assert up.returncode == 0, up.stderr
    try:
        for i, name in enumerate(names):
            port = 20080 + i
            ports.append(port)
            fwd = subprocess.Popen(
                [*MVMCTL, "forward", name, "-p", f"{port}:80"],
                stderr=subprocess.PIPE,
                text=True,
            )
            assert fwd.stderr is not None
            assert "forwarding" in fwd.stderr.readline()
            assert "Hello from mvm" in _fetch(port)
            fwd.send_signal(signal.SIGINT)
            assert fwd.wait(timeout=30) == 130
    finally:
        down = mvmctl("down", *names)
    assert down.returncode == 0, down.stderr
    assert _resources() == before
