"""``mvmctl ls`` and ``mvmctl status``: the state store's view of every VM.

Kept apart from ``vm_commands`` (which boots VMs, and imports the engine, backends and
actors for it) so that listing, the command run most often, imports little.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from mvm.engine.base.errors import NotFoundError
from mvm.engine.base.paths import vm_dir
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm.owner import owner_alive
from mvm.engine.vm.reconcile import adopt_orphaned, reconcile


def read_mode(name: str) -> dict[str, Any] | None:
    try:
        data = json.loads((vm_dir(name) / "mode.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _row(rec: VmRecord, ports: list[str]) -> dict[str, Any]:
    """One VM as ``ls``/``status`` show it. Uptime and health describe a running VM only:
    an exited row keeps the last health its checks wrote (``healthy`` after a kill -9,
    issue 13), which says nothing about a VM that no longer runs, so it is not shown."""
    running = rec.state == "running"
    uptime = (time.time() - rec.started_at) if rec.started_at and running else None
    return {
        "name": rec.name,
        "backend": rec.backend,
        "mode": rec.mode,
        "state": rec.state,
        "uptime_s": round(uptime, 1) if uptime is not None else None,
        "ports": ports,
        "access": "sealed" if rec.sealed else "accessible",
        "pid": rec.pid,
        "exit_code": rec.exit_code,
        "exit_reason": rec.exit_reason,
        "supervised": owner_alive(rec.owner),
        "supervisor_pid": int(rec.owner.split(":")[0]) if rec.owner else None,
        "health": json.loads(rec.health) if rec.health and running else {},
    }


async def _rows() -> list[dict[str, Any]]:
    """Every VM, after the reconciliation ``Engine.open`` does (mark dead rows, kill
    orphans of attached runs, give detached VMs that lost their shim a new one), but
    without opening an engine: listing starts no VM, so it needs no supervisor, backend
    or actor, and their imports would be most of ``ls``'s run time."""
    async with StateStore.open() as store:
        await reconcile(store)
        await adopt_orphaned(store)
        out = []
        for rec in await store.list_vms():
            ports = [
                f"{p.host_addr}:{p.host_port}->{p.guest_port}"
                for p in await store.list_ports(rec.name)
            ]
            out.append(_row(rec, ports))
        return out


async def cmd_ls(args: argparse.Namespace) -> int:
    rows = await _rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from mvm.cli.ls_table import ls_cells, print_table  # rich: only for a table

    print_table([ls_cells(r, health_summary(r["health"])) for r in rows])
    return 0


def health_summary(health: dict[str, str]) -> str:
    """One word for the table: the worst service state, naming the unhealthy ones."""
    if not health:
        return "-"
    bad = sorted(name for name, state in health.items() if state == "unhealthy")
    if bad:
        return "unhealthy:" + ",".join(bad)
    return "healthy" if all(s == "healthy" for s in health.values()) else "unknown"


async def _seccomp_tier(name: str) -> str | None:
    """The VM's image's seccomp tier (None: no such VM or its image is unreadable)."""
    from mvm.engine.vm.uid_check import image_security

    async with StateStore.open() as store:
        rec = await store.get_vm(name)
    tier = image_security(rec.image).get("seccomp_tier") if rec is not None else None
    return str(tier) if tier is not None else None


async def cmd_status(args: argparse.Namespace) -> int:
    for r in await _rows():
        if r["name"] == args.name:
            recorded = read_mode(args.name)
            r["start_mode"] = recorded.get("mode") if recorded else None
            from mvm.engine.vm.uid_check import vm_uid_status  # reads the image

            uids = await vm_uid_status(args.name)  # declared uids vs the guest's /proc
            tier = await _seccomp_tier(args.name)
            if args.json:
                print(json.dumps({**r, "uids": uids, "seccomp_tier": tier}, indent=2))
                return 0
            where = f"recorded in {vm_dir(args.name) / 'mode.json'}" if recorded else "not recorded"
            print(f"name:       {r['name']}")
            print(f"state:      {r['state']}")
            print(f"start mode: {r['start_mode'] or r['mode']} ({where})")
            print(f"mode now:   {r['mode']}")
            print(f"backend:    {r['backend']}")
            print(f"access:     {r['access']}")
            print(f"pid:        {r['pid'] or '-'}")
            supervisor = f"pid {r['supervisor_pid']}" if r["supervisor_pid"] else "-"
            print(f"supervisor: {supervisor} ({'alive' if r['supervised'] else 'none'})")
            print(f"ports:      {', '.join(r['ports']) or '-'}")
            print(f"health:     {health_summary(r['health'])}")
            if r["uptime_s"] is not None:
                print(f"uptime:     {r['uptime_s']:.0f}s")
            if r["exit_code"] is not None or r["exit_reason"]:
                print(f"exit:       {r['exit_code']} ({r['exit_reason']})")
            print(uids)
            print(f"seccomp:    {tier or 'unknown'}")
            return 0
    raise NotFoundError(f"no VM named {args.name!r}", code="E_VM_NOT_FOUND")
