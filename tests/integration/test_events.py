"""`mvmctl events --json`, in the background, sees the `vm.stopped` of a real QEMU VM
that `mvmctl down` (another process) stops (issue 16). Three processes: the VM's shim
publishes, `down` asks it to stop, `events` follows the store."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from typing import IO, Any

import pytest

from mvm import Image

from .conftest import qemu_pids
from .test_cli import MVMCTL, mvmctl

pytestmark = pytest.mark.qemu


def _lines(stream: IO[str]) -> queue.Queue[str]:
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            out.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return out


def _until(lines: queue.Queue[str], vm: str, kind: str, timeout: float) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {kind} of {vm} in {[e['kind'] for e in seen]}"
        try:
            ev = json.loads(lines.get(timeout=left))
        except queue.Empty:
            continue
        seen.append(ev)
        if ev["vm"] == vm and ev["kind"] == kind:
            return seen


def test_events_sees_the_stop_of_a_vm_down_stops(demo_image: Image) -> None:
    before = qemu_pids()
    start = time.time()
    up = mvmctl("up", "demo", "--name", "evq")
    assert up.returncode == 0, up.stderr
    follower = subprocess.Popen(
        [*MVMCTL, "events", "--json", "--since", str(start - 1), "evq"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        lines = _lines(follower.stdout)
        ready = _until(lines, "evq", "vm.ready", timeout=60)[-1]
        assert ready["data"]["hello"]  # the guest agent's hello, published by the shim
        down = mvmctl("down", "evq")
        assert down.returncode == 0, down.stderr
        stopped = _until(lines, "evq", "vm.stopped", timeout=60)[-1]
        assert stopped["data"]["reason"] == "stopped" and stopped["data"]["code"] == 0
        assert follower.poll() is None
    finally:
        follower.terminate()
        follower.wait(timeout=30)
        mvmctl("down", "evq")
    assert qemu_pids() == before
