"""A state-store row for tests that write rows directly (ls, logs, wait views): one
default VM, exited a moment ago, with the fields a test cares about overridden."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import attrs

from mvm.engine.store import VmRecord


def vm_row(name: str, home: Path, **fields: Any) -> VmRecord:
    now = time.time()
    base = VmRecord(
        name=name,
        backend="qemu",
        mode="detached",
        state="exited",
        pid=None,
        pid_start_time=None,
        run_dir=str(home / "vms" / name),
        image="/nonexistent/image",
        sealed=False,
        created_at=now - 60,
        started_at=now - 50,
        exited_at=now - 5,
        exit_code=0,
        exit_reason="guest exited",
        control_socket=None,
        agent_socket=None,
        console_log=None,
        spec_json="{}",
        owner=None,
        health=None,
    )
    return attrs.evolve(base, **fields)
