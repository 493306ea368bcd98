"""`mvmctl wait NAME` answers the VM's exit status when `down` ends it (issue 13).

`down` removes the row (`ls` no longer shows the VM, as before); the removal leaves a
``vm.removed`` tombstone with the row's last state and exit status, which a waiter that
saw the row reads back, instead of answering E_VM_NOT_FOUND.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio
import trio.testing

from mvm.cli.vm_commands import cmd_wait
from mvm.engine.store import StateStore, VmRecord


def _mvmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _rec(name: str, state: str = "running", code: int | None = None, at: float = 1.0) -> VmRecord:
    return VmRecord(
        name=name,
        backend="stub",
        mode="detached",
        state=state,
        pid=None,
        pid_start_time=None,
        run_dir=f"/nonexistent/{name}",
        image="/nonexistent/image",
        sealed=True,
        created_at=at,
        started_at=None,
        exited_at=None,
        exit_code=code,
        exit_reason="stopped" if state == "exited" else None,
        control_socket=None,
        agent_socket=None,
        console_log=None,
        spec_json="{}",
        owner=None,
    )


async def test_delete_and_replace_leave_a_tombstone(tmp_path: Path) -> None:
    async with StateStore.open(tmp_path / "s.db") as st:
        await st.insert_vm(_rec("a", "exited", 7, at=1.0))
        assert await st.delete_vm("a")
        tomb = await st.last_removal("a", 1.0)
        assert tomb is not None and tomb.data["exit_code"] == 7
        assert tomb.data["state"] == "exited"
        # a new VM claiming an exited one's name removes the old row: tombstone too
        await st.insert_vm(_rec("b", "exited", 3, at=2.0))
        await st.claim_vm(_rec("b", "starting", at=3.0))
        old = await st.last_removal("b", 2.0)
        assert old is not None and old.data["exit_code"] == 3
        assert await st.last_removal("b", 3.0) is None  # the new one still lives
        assert not await st.delete_vm("nobody")
        assert await st.last_removal("nobody", 1.0) is None


async def test_wait_answers_the_exit_status_when_down_stops_the_vm(
    capsys: pytest.CaptureFixture[str], mock_clock: trio.testing.MockClock
) -> None:
    """The waiter's poll sleeps on a mock clock, so ``down`` runs to its end between two
    polls (deterministic: a real-time poll sometimes caught the exited row just before
    ``down`` deleted it, and the defect only showed some of the time)."""
    up = _mvmctl("up", "--backend", "stub", "--name", "waited")
    assert up.returncode == 0, up.stderr
    result: list[int] = []
    try:
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                result.append(await cmd_wait(argparse.Namespace(name="waited", timeout=60)))

            nursery.start_soon(waiter)
            # cmd_wait has read the running row and sleeps in its poll loop
            await trio.testing.wait_all_tasks_blocked()
            assert not result
            down = await trio.to_thread.run_sync(_mvmctl, "down", "waited")
            assert down.returncode == 0, down.stderr
            mock_clock.jump(1.0)  # the next poll finds the row gone
    finally:
        _mvmctl("down", "waited")
    shown = capsys.readouterr().out.strip()
    # the stub's VMM is a host process stopped by SIGTERM: -15, as `wait` prints for
    # an exited row; a nonzero status makes `wait` exit 1, as for a VM that exits alone
    assert shown == "-15", shown
    assert result == [1]
    gone = _mvmctl("ls", "--json")
    assert "waited" not in gone.stdout  # down still removes the VM from ls


async def test_wait_on_a_name_that_never_existed_is_not_found() -> None:
    from mvm.engine.base.errors import NotFoundError

    with pytest.raises(NotFoundError) as err:
        await cmd_wait(argparse.Namespace(name="never", timeout=1))
    assert err.value.code == "E_VM_NOT_FOUND"
