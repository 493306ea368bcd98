"""The lifecycle defects of issue 13, each pinned on real QEMU.

* a requested stop (Engine.stop, ``mvmctl down``) and a guest command that simply ends
  are normal ends: no ``actor.failed`` / ``actor.restarting`` is logged for them;
* ``ls`` tells the true reason: a VMM killed by SIGKILL is not "guest exited", and an
  exited VM has no health;
* ``up`` refused with E_PORT_IN_USE leaves no run dir;
* Ctrl-C during ``mvmctl up`` at any moment tears the half-made VM down (or, if the VM was
  ready first, leaves it running as ``up`` promised); never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import anyio
import pytest
import trio

from mvm import Engine, Image, ImageSpec, VmRequest
from mvm.engine.base.process import processes_tagged
from mvm.engine.builders.offline_image import build_offline_image

from .test_cli import MVMCTL, mvmctl

pytestmark = pytest.mark.qemu

FAILURE_EVENTS = ("actor.failed", "actor.restarting", "vm.undo_failed")


def _row(name: str) -> dict[str, object] | None:
    rows = [r for r in json.loads(mvmctl("ls", "--json").stdout) if r["name"] == name]
    return dict(rows[0]) if rows else None


def _run_dir(name: str) -> Path:
    return Path(os.environ["MVM_HOME"]) / "vms" / name


@pytest.fixture(scope="module")
def command_image() -> Image:
    spec = ImageSpec(name="ends", command=("/bin/sh", "-c", "echo done; exit 3"))
    return trio.run(build_offline_image, spec)


async def test_engine_stop_logs_no_failure(
    demo_image: Image, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with Engine.open() as engine:
        await engine.start(VmRequest(name="calm", image_dir=str(demo_image.directory)), demo_image)
        await engine.stop("calm")
        rec = await engine.store.get_vm("calm")
    assert rec is not None and rec.state == "exited" and rec.exit_reason == "stopped", rec
    assert not [e for e in FAILURE_EVENTS if e in caplog.text], caplog.text


async def test_command_that_ends_logs_no_failure(
    command_image: Image, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with Engine.open() as engine:
        vm = await engine.start(
            VmRequest(name="ends1", image_dir=str(command_image.directory)), command_image
        )
        with anyio.fail_after(60):
            assert await vm.wait() == 3
        rec = await engine.store.get_vm("ends1")
    assert rec is not None and rec.exit_reason == "guest exited", rec
    assert not [e for e in FAILURE_EVENTS if e in caplog.text], caplog.text


def test_down_asks_the_owner_and_logs_no_failure(demo_image: Image) -> None:
    env = {**os.environ, "MVM_LOG_LEVEL": "info"}  # the shim logs its events at info
    up = subprocess.run(
        [*MVMCTL, "up", "demo", "--name", "polite"], env=env, capture_output=True, text=True
    )
    assert up.returncode == 0, up.stderr
    # down removes the run dir: keep the supervisor's log open to read it afterwards.
    with open(_run_dir("polite") / "shim.log", errors="replace") as shim_log:
        down = mvmctl("down", "polite")
        assert down.returncode == 0, down.stderr
        text = shim_log.read()
    assert "vm.powering_off" in text, text  # the owner powered the guest off itself
    assert not [e for e in FAILURE_EVENTS if e in text], text


def test_ls_tells_a_killed_vmm_from_a_guest_that_exited(demo_image: Image) -> None:
    assert mvmctl("up", "demo", "--name", "shot").returncode == 0
    row = _row("shot")
    assert row is not None
    vmm = int(str(row["pid"]))
    os.kill(vmm, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while (row := _row("shot")) and row["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)  # the shim notices the exit (pidfd) and records it
    assert row is not None and row["state"] == "exited", row
    assert row["exit_reason"] == "VMM killed by SIGKILL", row
    assert not row.get("health"), row
    assert mvmctl("down", "shot").returncode == 0


def test_up_refused_for_a_busy_port_leaves_no_run_dir(demo_image: Image) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        up = mvmctl("up", "demo", "--name", "busy", "-p", f"{port}:80")
    assert up.returncode != 0 and up.stderr.startswith("error[E_PORT_IN_USE]"), up.stderr
    assert not _run_dir("busy").exists()
    assert _row("busy") is None


@pytest.mark.parametrize("delay", [0.3, 0.7, 1.0, 1.5, 2.5])
def test_ctrl_c_during_up_at_any_moment(demo_image: Image, delay: float) -> None:
    """The delay is the fault's moment (from "imports still loading" to "booted"), not a
    synchronisation: every outcome is checked, whichever the signal met."""
    name = f"int{int(delay * 10)}"
    proc = subprocess.Popen(
        [*MVMCTL, "up", "demo", "--name", name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=120)
    assert "Traceback" not in err, err
    row = _row(name)
    if proc.returncode == 0:  # up finished first: the VM runs, as up promised
        assert f"{name}: up in" in err and row is not None and row["state"] == "running"
        assert mvmctl("down", name).returncode == 0
    else:
        assert proc.returncode == 130, err
        assert "interrupted" in err, err
        assert row is None or row["state"] in ("exited", "failed"), row
    assert processes_tagged(_run_dir(name)) == []
    assert not list(_run_dir(name).glob("*.sock")) if _run_dir(name).is_dir() else True
