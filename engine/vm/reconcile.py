"""Bring the state store in line with reality at every engine start.

Peer systems leak VMMs after crashes and get fooled by PID reuse. We check each
live-looking row against the process table by pid + start time: an attached VM
whose engine died is an orphan (its VMM is killed and its run files removed); a
detached VM whose VMM died is marked exited with the reason.
"""

from __future__ import annotations

import time

import structlog

from mvm.engine.base.errors import MvmError
from mvm.engine.base.process import is_same_process, kill_verified
from mvm.engine.base.runfiles import remove_run_files
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm import network

log = structlog.get_logger("mvm.reconcile")


def owner_alive(owner: str | None) -> bool:
    if not owner or ":" not in owner:
        return False
    pid_text, start_text = owner.split(":", 1)
    try:
        return is_same_process(int(pid_text), int(start_text))
    except ValueError:
        return False


async def reconcile(store: StateStore) -> list[VmRecord]:
    """Fix up rows; return the rows that changed."""
    changed: list[VmRecord] = []
    for rec in await store.list_vms():
        if rec.state in ("exited", "failed"):
            continue
        vmm_alive = is_same_process(rec.pid, rec.pid_start_time)
        if owner_alive(rec.owner):
            continue
        if rec.mode == "attached" or not vmm_alive:
            reason = "engine died; orphaned VMM killed" if vmm_alive else "VMM died"
            if vmm_alive:
                kill_verified(rec.pid, rec.pid_start_time)
            remove_run_files(rec.run_dir)
            for lease in network.leases_of(rec.name):
                await network.release(lease)
            await store.update_vm(
                rec.name, state="exited", exited_at=time.time(), exit_reason=reason, pid=None
            )
            log.warning("reconcile.vm_exited", vm=rec.name, reason=reason)
            updated = await store.get_vm(rec.name)
            if updated is not None:
                changed.append(updated)
    return changed


async def adopt_orphaned(store: StateStore) -> list[str]:
    """Give every detached VM whose supervisor died (but whose VMM lives) a new shim."""
    from mvm.engine.vm.detached import adopt_detached  # detached imports this module

    adopted = []
    for rec in await store.list_vms():
        if rec.state != "running" or rec.mode != "detached" or owner_alive(rec.owner):
            continue
        if not is_same_process(rec.pid, rec.pid_start_time):
            continue
        try:
            await adopt_detached(rec.name)
        except MvmError as exc:
            log.warning("reconcile.adopt_failed", vm=rec.name, code=exc.code, error=exc.message)
            continue
        log.info("reconcile.adopted", vm=rec.name)
        adopted.append(rec.name)
    return adopted
