"""Everything a fault could leave behind, counted the same way after every scenario.

A leak is anything of this test's ``$MVM_HOME`` still alive or present once the
scenario is over and the next ``mvmctl`` command ran: a VMM (a process tagged with a run
dir under the home), a supervisor (a shim whose environment names the home), a socket,
a TAP or network lease, a ``.tmp`` staging file, or a row neither exited nor failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mvm.engine.base.process import VMM_TAG_ENV
from mvm.engine.vm import network

MVMCTL = [sys.executable, "-m", "mvm.cli"]


def mvmctl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MVMCTL, *args], capture_output=True, text=True, timeout=180, check=False, env=env
    )


def home() -> Path:
    return Path(os.environ["MVM_HOME"])


def _processes_with_env(needle: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def leaks(*, rows: bool = True) -> list[str]:
    """What is left of this home's VMs; [] is the pass. ``rows`` runs ``mvmctl ls``
    (which reconciles) and counts rows that are neither exited nor failed."""
    found: list[str] = []
    if rows:
        ls = mvmctl("ls", "--json")
        if ls.returncode == 0:
            for row in json.loads(ls.stdout):
                if row["state"] not in ("exited", "failed"):
                    found.append(f"row {row['name']} {row['state']}")
        else:
            found.append(f"ls failed: {ls.stderr.strip()}")
    root = home()
    vmms = _processes_with_env(f"{VMM_TAG_ENV}={root}/".encode())
    if vmms:
        found.append(f"VMMs {vmms}")
    shims = [
        pid
        for pid in _processes_with_env(f"MVM_HOME={root}\0".encode())
        if b"mvm.engine.shim" in Path(f"/proc/{pid}/cmdline").read_bytes()
    ]
    if shims:
        found.append(f"supervisors {shims}")
    socks = sorted(str(p.relative_to(root)) for p in root.rglob("*.sock"))
    if socks:
        found.append(f"sockets {socks}")
    tmps = sorted(str(p.relative_to(root)) for p in root.rglob("*.tmp"))
    if tmps:
        found.append(f"temp files {tmps}")
    lease_dir = network.leases_dir()
    for lease_file in sorted(lease_dir.iterdir()) if lease_dir.is_dir() else []:
        found.append(f"lease {lease_file.name}")
    for tap in taps():
        found.append(f"TAP {tap}")
    return found


def taps() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir() if p.name.startswith("mvmt")}
