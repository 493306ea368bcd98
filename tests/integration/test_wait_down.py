"""`mvmctl wait` of a real QEMU VM that `mvmctl down` stops (issue 13): the waiter gets
the VM's exit status (the guest powers off cleanly: 0), not E_VM_NOT_FOUND, and the VM
is gone from `ls` as before."""

from __future__ import annotations

import argparse
import json

import pytest
import trio
import trio.testing

from mvm import Image
from mvm.cli.vm_commands import cmd_wait
from mvm.engine.store import StateStore

from .conftest import qemu_pids
from .test_cli import mvmctl

pytestmark = pytest.mark.qemu


async def test_wait_reports_the_exit_status_of_a_downed_vm(
    demo_image: Image, capsys: pytest.CaptureFixture[str], mock_clock: trio.testing.MockClock
) -> None:
    before = qemu_pids()
    up = await trio.to_thread.run_sync(lambda: mvmctl("up", "demo", "--name", "waitq"))
    assert up.returncode == 0, up.stderr
    result: list[int] = []
    try:
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                result.append(await cmd_wait(argparse.Namespace(name="waitq", timeout=600)))

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()  # it saw the running row
            down = await trio.to_thread.run_sync(lambda: mvmctl("down", "waitq"))
            assert down.returncode == 0, down.stderr
            mock_clock.jump(1.0)  # its next poll finds the row gone
    finally:
        await trio.to_thread.run_sync(lambda: mvmctl("down", "waitq"))
    assert capsys.readouterr().out.strip() == "0"
    assert result == [0]
    async with StateStore.open() as store:
        assert await store.get_vm("waitq") is None
    assert "waitq" not in json.dumps(json.loads(mvmctl("ls", "--json").stdout))
    assert qemu_pids() == before
