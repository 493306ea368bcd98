"""Square the state store with the process table, at every engine start.

Each row that is neither exited nor failed is decided from three facts: is its owner
(the engine or shim that ran its RuntimeVM, pid + start time) alive; is its VMM alive
(the recorded pid + start time, or, when the owner died before recording it, any
process tagged as the VM's VMM in its environment: engine/base/process.py); and how far it got (its
state and mode). Then:

* owner alive                                 -> nothing to do (it is being run);
* VMM alive, detached, running, plan on file  -> left for ``adopt_orphaned`` (a new shim);
* VMM alive otherwise                         -> killed: an attached VM whose engine died,
  or any VM whose owner died during boot, cannot be trusted half-made;
* VMM dead                                    -> marked exited with the true reason.
In every case but the first two the run dir's transient files (sockets) and the VM's
network leases (TAPs) are released, so no row stays ``starting`` without a living owner.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from mvm.engine.base.errors import MvmError
from mvm.engine.base.log import get_logger
from mvm.engine.base.process import is_same_process, kill_verified, processes_tagged, wait_gone
from mvm.engine.base.runfiles import PLAN_FILE, remove_run_files
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm import network
from mvm.engine.vm.owner import owner_alive

log = get_logger("mvm.reconcile")

FINAL_STATES = ("exited", "failed")
KILL_WAIT_S = 5.0


def live_vmms(rec: VmRecord) -> list[tuple[int, int]]:
    """The VM's VMM process(es) still alive: the recorded one, or found by run dir."""
    if rec.pid is not None and is_same_process(rec.pid, rec.pid_start_time):
        assert rec.pid_start_time is not None
        return [(rec.pid, rec.pid_start_time)]
    return processes_tagged(rec.run_dir)


def adoptable(rec: VmRecord) -> bool:
    return (
        rec.mode == "detached"
        and rec.state == "running"
        and is_same_process(rec.pid, rec.pid_start_time)
        and (Path(rec.run_dir) / PLAN_FILE).is_file()
    )


async def reconcile(store: StateStore) -> list[VmRecord]:
    """Settle every unowned live-looking row; return the rows that changed."""
    changed: list[VmRecord] = []
    for rec in await store.list_vms():
        if rec.state in FINAL_STATES or owner_alive(rec.owner) or adoptable(rec):
            continue
        updated = await settle(store, rec)
        if updated is not None:
            changed.append(updated)
    return changed


async def settle(store: StateStore, rec: VmRecord, *, reason: str | None = None) -> VmRecord | None:
    """Kill what is left of an unowned VM, release what it held, record how it ended."""
    vmms = live_vmms(rec)
    for pid, start in vmms:
        kill_verified(pid, start)
    with anyio.move_on_after(KILL_WAIT_S):  # one deadline for them all
        for pid, start in vmms:
            await wait_gone(pid, start, KILL_WAIT_S)
    if reason is None:
        when = "during boot" if rec.state == "starting" else "while it ran"
        if vmms:
            reason = f"its supervisor died {when}; the orphaned VMM was killed"
        elif rec.state == "starting":
            reason = "its supervisor died during boot"
        else:
            reason = "the VMM and its supervisor died"
    remove_run_files(rec.run_dir)
    (Path(rec.run_dir) / PLAN_FILE).unlink(missing_ok=True)
    for lease in network.leases_of(rec.name):
        await network.release(lease)
    state = "failed" if rec.state == "starting" else "exited"
    await store.update_vm(
        rec.name,
        state=state,
        exited_at=time.time(),
        exit_reason=reason,
        pid=None,
        owner=None,
        health=None,
    )
    log.warning("reconcile.vm_settled", vm=rec.name, state=state, reason=reason)
    return await store.get_vm(rec.name)


async def adopt_orphaned(store: StateStore) -> list[str]:
    """Give every detached VM whose supervisor died (but whose VMM lives) a new shim."""
    from mvm.engine.vm.detached import adopt_detached  # detached imports this module

    adopted = []
    for rec in await store.list_vms():
        if owner_alive(rec.owner) or not adoptable(rec):
            continue
        try:
            await adopt_detached(rec.name)
        except MvmError as exc:
            log.warning("reconcile.adopt_failed", vm=rec.name, code=exc.code, error=exc.message)
            continue
        log.info("reconcile.adopted", vm=rec.name)
        adopted.append(rec.name)
    return adopted
