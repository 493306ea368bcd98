"""`ls`/`status` after faults (issue 13): an exited VM shows no health (its checks
stopped; the last state they wrote, often `healthy`, says nothing about it), and a VM
adopted by a new supervisor keeps its uptime (started_at) instead of restarting at 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio
from helpers.records import vm_row

from mvm.engine.store import StateStore, VmRecord


def _mvmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _exited_row(name: str) -> VmRecord:
    """What a kill -9 of a VM whose health check had passed leaves: state exited, the
    last health written by the (now gone) HealthCheck still in the row."""
    return vm_row(
        name,
        Path(os.environ["MVM_HOME"]),
        sealed=True,
        exit_code=137,
        exit_reason="VMM died",
        health=json.dumps({"web": "healthy"}),
    )


async def test_an_exited_vm_shows_no_health(mvm_home: Path) -> None:
    async with StateStore.open(mvm_home / "state.db") as store:
        await store.insert_vm(_exited_row("killed"))
    ls = _mvmctl("ls", "--json")
    assert ls.returncode == 0, ls.stderr
    (row,) = json.loads(ls.stdout)
    assert row["state"] == "exited" and row["health"] == {}, row
    assert row["uptime_s"] is None
    table = _mvmctl("ls")
    (line,) = [ln for ln in table.stdout.splitlines() if ln.startswith("killed")]
    assert "healthy" not in line, line
    status = _mvmctl("status", "killed", "--json")
    assert json.loads(status.stdout)["health"] == {}, status.stdout
    text = _mvmctl("status", "killed")
    assert "health:     -" in text.stdout and "healthy" not in text.stdout, text.stdout


async def test_adoption_keeps_started_at(mvm_home: Path) -> None:
    """A detached (stub) VM whose supervisor is SIGKILLed is adopted by the next mvmctl
    command; the VM kept running all along, so its uptime must not restart at 0."""
    up = _mvmctl("up", "--backend", "stub", "--name", "adoptee")
    assert up.returncode == 0, up.stderr
    try:
        async with StateStore.open(mvm_home / "state.db") as store:
            before = await store.get_vm("adoptee")
        assert before is not None and before.owner and before.started_at
        shim = int(before.owner.split(":")[0])
        os.kill(shim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{shim}").exists() and time.monotonic() < deadline:
            await trio.sleep(0.02)
        assert _mvmctl("ls").returncode == 0  # any engine start adopts the orphan
        async with StateStore.open(mvm_home / "state.db") as store:
            after = await store.get_vm("adoptee")
        assert after is not None and after.state == "running"
        assert after.owner and after.owner != before.owner, "not adopted"
        assert after.started_at == before.started_at
    finally:
        _mvmctl("down", "adoptee")
