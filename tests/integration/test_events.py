"""`mvmctl events --json`, in the background, sees the `vm.stopped` of a real QEMU VM
that `mvmctl down` (another process) stops (issue 16). Three processes: the VM's shim
publishes, `down` asks it to stop, `events` follows the store."""

from __future__ import annotations

import subprocess
import time

import pytest
from helpers.events import events_until, lines_of

from mvm import Image

from .conftest import qemu_pids
from .test_cli import MVMCTL, mvmctl

pytestmark = pytest.mark.qemu


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
        lines = lines_of(follower.stdout)
        ready = events_until(lines, "evq", "vm.ready", timeout=60)[-1]
        assert ready["data"]["hello"]  # the guest agent's hello, published by the shim
        down = mvmctl("down", "evq")
        assert down.returncode == 0, down.stderr
        stopped = events_until(lines, "evq", "vm.stopped", timeout=60)[-1]
        assert stopped["data"]["reason"] == "stopped" and stopped["data"]["code"] == 0
        assert follower.poll() is None
    finally:
        follower.terminate()
        follower.wait(timeout=30)
        mvmctl("down", "evq")
    assert qemu_pids() == before
