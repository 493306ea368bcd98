"""kill -9 of a VM's owner at every named boot step, then the next mvmctl command.

The owner is the per-VM supervisor (the shim of ``mvmctl up`` / ``mvmctl clone``) or, for
an attached run, the engine (``mvmctl run --attached`` itself). ``MVM_FAULT_KILL_AT=step``
makes that process SIGKILL itself as the step starts (engine/vm/steps.py), so each
injection point is exactly "every step before it done". Then ``mvmctl ls`` (any command
opens the engine, which reconciles) must leave: no VMM process of that VM, no socket in
its run dir, no TAP or lease, and no row in starting/running without a living owner. The
table is printed (``-s`` or on failure) and kept in the README.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from mvm import Image
from mvm.engine.base.process import processes_tagged
from mvm.engine.vm import network
from mvm.engine.vm.boot import CLONE, COLD_START

from .leaks import MVMCTL, mvmctl

pytestmark = pytest.mark.qemu


def _home() -> Path:
    return Path(os.environ["MVM_HOME"])


def _leftovers(name: str) -> list[str]:
    """What a killed boot left behind after the next command: empty is the pass."""
    run_dir = _home() / "vms" / name
    found = []
    rows = [r for r in json.loads(mvmctl("ls", "--json").stdout) if r["name"] == name]
    for row in rows:
        if row["state"] not in ("exited", "failed"):
            found.append(f"row {row['state']}")
    vmms = processes_tagged(run_dir)
    if vmms:
        found.append(f"VMM alive {[pid for pid, _ in vmms]}")
    socks = sorted(p.name for p in run_dir.glob("*.sock")) if run_dir.is_dir() else []
    if socks:
        found.append(f"sockets {socks}")
    for lease in network.leases_of(name):
        found.append(f"lease {lease.ip}")
        if Path("/sys/class/net", lease.tap).exists():
            found.append(f"TAP {lease.tap}")
    return found


def _taps() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith("mvmt")}


def _killed_run(argv: list[str], step: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MVM_FAULT_KILL_AT": step}
    return subprocess.run(
        [*MVMCTL, *argv], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def _report(family: str, steps: tuple[str, ...], results: dict[str, list[str]]) -> None:
    lines = [f"| step | {family} |", "|---|---|"]
    lines += [f"| {s} | {', '.join(results[s]) or 'clean'} |" for s in steps]
    print("\nkill -9 of the owner at each boot step, then `mvmctl ls`:\n" + "\n".join(lines))
    bad = {s: left for s, left in results.items() if left}
    assert bad == {}, f"{family}: leftovers after kill -9 at {bad}"


def _name(prefix: str, step: str) -> str:
    return f"{prefix}-{step}".replace("_", "-")[:20]


def test_kill_shim_at_every_step_of_up(demo_image: Image, free_port: int) -> None:
    """``mvmctl up --net tap``: the shim dies at each step (TAPs are in play)."""
    results: dict[str, list[str]] = {}
    taps_before = _taps()
    for step in COLD_START.names:
        name = _name("k", step)
        argv = ["up", "demo", "--name", name, "-p", f"{free_port}:80", "--net", "tap"]
        proc = _killed_run(argv, step)
        assert proc.returncode != 0, f"{step}: the shim was to die before the VM was ready"
        assert "Traceback" not in proc.stderr, proc.stderr
        results[step] = _leftovers(name)
        new_taps = _taps() - taps_before
        if new_taps:
            results[step].append(f"TAPs {sorted(new_taps)}")
    _report("up (shim)", COLD_START.names, results)


def test_kill_attached_engine_at_every_step(demo_image: Image, free_port: int) -> None:
    """``mvmctl run --attached``: the engine is the CLI process itself."""
    results: dict[str, list[str]] = {}
    for step in COLD_START.names:
        name = _name("a", step)
        argv = ["run", "--attached", "demo", "--name", name, "-p", f"{free_port}:80"]
        proc = _killed_run(argv, step)
        assert proc.returncode == -9, f"{step}: {proc.returncode} {proc.stderr}"
        results[step] = _leftovers(name)
    _report("run --attached (engine)", COLD_START.names, results)


def test_kill_shim_at_every_step_of_clone(demo_image: Image) -> None:
    up = mvmctl("up", "demo", "--name", "ksrc")
    assert up.returncode == 0, up.stderr
    try:
        snap = mvmctl("snapshot", "ksrc", "--as", "ksnap")
        assert snap.returncode == 0, snap.stderr
    finally:
        mvmctl("down", "ksrc")
    results: dict[str, list[str]] = {}
    for step in CLONE.names:
        name = _name("c", step)
        proc = _killed_run(["clone", "ksnap", "--name", name], step)
        assert proc.returncode != 0, f"{step}: the shim was to die before the clone was ready"
        assert "Traceback" not in proc.stderr, proc.stderr
        results[step] = _leftovers(name)
    _report("clone (shim)", CLONE.names, results)
