from __future__ import annotations

import subprocess
import time

from mvm.engine.base.process import is_same_process, kill_verified, process_start_time


def test_start_time_identifies_a_process_and_survives_pid_reuse_checks() -> None:
    proc = subprocess.Popen(["sleep", "30"])
    try:
        start = process_start_time(proc.pid)
        assert start is not None
        assert is_same_process(proc.pid, start)
        # A recorded start time that differs means "some other process reused the pid".
        assert not is_same_process(proc.pid, start + 1)
        assert not kill_verified(proc.pid, start + 1)
        assert proc.poll() is None
        assert kill_verified(proc.pid, start)
        proc.wait(timeout=5)
        assert not is_same_process(proc.pid, start)
    finally:
        proc.kill()
        proc.wait()


def test_zombie_is_not_alive() -> None:
    proc = subprocess.Popen(["true"])
    start = process_start_time(proc.pid)
    time.sleep(0.2)  # exited but not reaped: a zombie
    assert not is_same_process(proc.pid, start)
    proc.wait()


def test_missing_pid() -> None:
    assert process_start_time(2**22 + 1) is None
    assert not is_same_process(None, None)
