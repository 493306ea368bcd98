"""mvmctl as a user runs it: attached run + Ctrl-C, detached up/ls/down, and
bad input answered with one coded line (never a traceback)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mvm import Image

from .conftest import qemu_pids

pytestmark = pytest.mark.qemu

MVMCTL = [sys.executable, "-m", "mvm.cli"]


def mvmctl(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MVMCTL, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def spawn_run(name: str, port: int) -> subprocess.Popen[str]:
    """``mvmctl run --attached demo``, in the background, its stderr readable line by line."""
    return subprocess.Popen(
        [*MVMCTL, "run", "--attached", "demo", "--name", name, "-p", f"{port}:80"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _fetch(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as resp:
        return str(resp.read().decode())


def test_run_attached_serves_and_ctrl_c_tears_down(demo_image: Image, free_port: int) -> None:
    before = qemu_pids()
    proc = spawn_run("att", free_port)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "att: ready" in line, line
        assert "Hello from mvm" in _fetch(free_port)
        assert len(qemu_pids() - before) == 1
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert qemu_pids() == before
    run_dir = Path(os.environ["MVM_HOME"]) / "vms" / "att"
    assert not [p for p in run_dir.iterdir() if p.suffix in (".sock", ".qcow2", ".pid")]


def _interrupt_a_boot(port: int, sig: int, before: set[int]) -> tuple[int, str]:
    """Start an attached run, send ``sig`` as soon as its VMM exists; (rc, stderr)."""
    proc = spawn_run("early", port)
    try:
        deadline = time.monotonic() + 60
        while not qemu_pids() - before and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        assert qemu_pids() - before, "no VMM was spawned"
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_boot_tears_down(demo_image: Image, free_port: int, sig: int) -> None:
    """Ctrl-C (or a SIGTERM from a supervisor) while the guest still boots: the
    command's scope is cancelled, the VMM it just spawned is stopped, nothing stays.
    On a loaded host the boot can win the race against the signal (then the run is torn
    down after ready, a different path); up to three tries make sure one lands in boot."""
    before = qemu_pids()
    for _ in range(3):
        rc, err = _interrupt_a_boot(free_port, sig, before)
        assert rc == 130, err
        assert qemu_pids() == before
        if "early: ready" not in err:
            break  # the signal did land during boot
        mvmctl("down", "early")  # the exited row, so the next try starts clean
    assert "early: ready" not in err, "the boot won the race three times"
    assert "interrupted" in err and "Traceback" not in err, err
    assert qemu_pids() == before
    (row,) = json.loads(mvmctl("ls", "--json").stdout)  # kept, like an exited container
    assert row["name"] == "early" and row["state"] == "exited", row
    run_dir = Path(os.environ["MVM_HOME"]) / "vms" / "early"
    assert not run_dir.exists() or not [
        p for p in run_dir.iterdir() if p.suffix in (".sock", ".qcow2", ".pid")
    ]


def test_up_ls_logs_down(demo_image: Image, free_port: int) -> None:
    before = qemu_pids()
    up = mvmctl("up", "demo", "--name", "bg", "-p", f"{free_port}:80")
    assert up.returncode == 0, up.stderr
    try:
        assert "Hello from mvm" in _fetch(free_port)
        rows = json.loads(mvmctl("ls", "--json").stdout)
        (row,) = [r for r in rows if r["name"] == "bg"]
        assert row["mode"] == "detached" and row["state"] == "running"
        assert row["ports"] == [f"127.0.0.1:{free_port}->80"]
        assert row["access"] == "sealed"
        logs = mvmctl("logs", "bg", "--all")  # the raw console (default: the app's output)
        assert "mvm-init: ready" in logs.stdout
        assert "mvm-init:" not in mvmctl("logs", "bg").stdout
        again = mvmctl("up", "demo", "--name", "bg")
        assert again.returncode != 0 and again.stderr.startswith("error[E_NAME_TAKEN]")
    finally:
        down = mvmctl("down", "bg")
    assert down.returncode == 0, down.stderr
    deadline = time.monotonic() + 10
    while qemu_pids() != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert qemu_pids() == before
    assert json.loads(mvmctl("ls", "--json").stdout) == []


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["run", "missing-spec.json"], "E_SPEC_MISSING"),
        (["run", "no-such-image"], "E_IMAGE_REF"),
        (["run", "demo", "-p", "99999:80"], "E_PORT_SPEC"),
        (["run", "demo", "--name", "bad/name"], "E_VM_NAME"),
        (["down", "ghost"], "E_VM_NOT_FOUND"),
        (["run", "demo", "--backend", "nope"], "E_HYPERVISOR_NAME"),
    ],
)
def test_bad_input_is_one_coded_line(args: list[str], code: str, tmp_path: Path) -> None:
    before = qemu_pids()
    result = subprocess.run(
        [*MVMCTL, *args], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error[{code}]"), lines[0]
    assert "Traceback" not in result.stderr
    assert qemu_pids() == before


def test_missing_entrypoint_is_rejected_at_build(tmp_path: Path) -> None:
    spec = tmp_path / "app.json"
    spec.write_text(json.dumps({"name": "app", "command": ["/usr/bin/does-not-exist"]}))
    result = mvmctl("build", str(spec))
    assert result.returncode != 0
    assert result.stderr.startswith("error[E_SPEC_ENTRYPOINT]"), result.stderr
