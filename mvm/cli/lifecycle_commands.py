"""Lifecycle verbs beyond up/down: detach (hand an attached VM to a shim) and cleanup."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

from mvm.actors.agent_mux import DETACH_REQUEST, MUX_SOCKET
from mvm.backends.guest.client import AgentClient
from mvm.engine.base.errors import AgentError, ConflictError
from mvm.engine.base.paths import mvm_home
from mvm.engine.base.runfiles import remove_run_dir
from mvm.engine.store import StateStore
from mvm.engine.vm import network
from mvm.engine.vm.agent_access import running_vm
from mvm.engine.vm.owner import owner_alive
from mvm.engine.vm.reconcile import reconcile


async def cmd_detach(args: argparse.Namespace) -> int:
    rec = await running_vm(args.name)
    if rec.mode == "detached":
        print(f"{args.name}: already detached", file=sys.stderr)
        return 0
    if not owner_alive(rec.owner):
        raise ConflictError(f"VM {args.name!r} has no live engine", code="E_VM_ORPHANED")
    try:
        stream = await anyio.connect_unix(Path(rec.run_dir) / MUX_SOCKET)
    except OSError:
        raise AgentError(
            f"the engine running {args.name!r} does not answer", code="E_AGENT_GONE"
        ) from None
    async with AgentClient.connect(stream, hello_timeout=10) as client:
        channel = await client.open_channel(DETACH_REQUEST)
        with anyio.fail_after(10):
            await channel.next()
    from mvm.cli.vm_commands import write_mode

    write_mode(args.name, "detached", detached_from="attached")
    print(f"{args.name}: detach requested; its terminal hands it to a supervisor", file=sys.stderr)
    return 0


async def cmd_cleanup(args: argparse.Namespace) -> int:
    removed: list[str] = []
    async with StateStore.open() as store:
        await reconcile(store)
        records = {rec.name: rec for rec in await store.list_vms()}
        for rec in records.values():
            if rec.state in ("exited", "failed"):
                remove_run_dir(rec.run_dir)
                await store.delete_vm(rec.name)
                removed.append(f"vm {rec.name}")
        live = {n for n, r in records.items() if r.state not in ("exited", "failed")}
    vms_root = mvm_home() / "vms"
    if vms_root.is_dir():
        for run_dir in vms_root.iterdir():
            if run_dir.name not in live:
                remove_run_dir(run_dir)
                removed.append(f"run dir {run_dir.name}")
    leases = network.leases_dir()
    if leases.is_dir():
        for vm in {lease.vm for path in leases.iterdir() for lease in _lease(path)} - live:
            for lease in network.leases_of(vm):
                await network.release(lease)
                removed.append(f"lease {lease.ip} ({vm})")
    for item in removed:
        print(f"removed {item}")
    if not removed:
        print("nothing to clean up")
    return 0


def _lease(path: Path) -> list[network.Lease]:
    import json

    try:
        return [network.Lease(**json.loads(path.read_text()))]
    except (OSError, ValueError, TypeError):
        path.unlink(missing_ok=True)
        return []
