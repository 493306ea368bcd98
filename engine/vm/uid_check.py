"""`mvmctl status`'s uid cross-check: the image's declared uids against the guest's /proc.

mvm-meta.json carries the resolved ``uids`` (``passthru.mvm.uids`` of mkGuest):
the agent's and the entrypoint's. The guest agent's ``uids`` request reads the
``Uid:`` lines of /proc/<pid>/status for itself, the command/shell entrypoint
and every supervised service. A process counts as matching only if its real,
effective, saved and filesystem uids all equal the declared one (a half-dropped
process is exactly what the check is for).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mvm.engine.base.errors import MvmError
from mvm.engine.images.image import Image

_UID_KEYS = ("uid", "euid", "suid", "fsuid")


def declared_uids(meta: dict[str, Any]) -> dict[str, int]:
    """``{"agent": N, "entrypoint": M}`` from mvm-meta.json (or passthru.mvm)."""
    uids = meta.get("uids") or meta.get("mvm", {}).get("uids") or {}
    sealed = bool(meta.get("sealed", True))
    return {
        "agent": int(uids.get("agent", 990)),
        "entrypoint": int(uids.get("entrypoint", 1000 if sealed else 0)),
    }


def _observed(proc: dict[str, Any]) -> set[int]:
    return {int(proc[k]) for k in _UID_KEYS if k in proc}


def _judge(label: str, want: int, procs: dict[str, dict[str, Any] | None]) -> str:
    running = {name: p for name, p in procs.items() if p}
    if not running:
        return f"{label} {want} (not running)"
    bad = {name: _observed(p) for name, p in running.items() if _observed(p) != {want}}
    if not bad:
        return f"{label} {want} (ok)"
    detail = ", ".join(
        f"{name} pid {running[name].get('pid')} runs as uid {'/'.join(map(str, sorted(got)))}"
        for name, got in sorted(bad.items())
    )
    return f"{label} {want} (MISMATCH: {detail})"


def uid_check_line(declared: dict[str, int], observed: dict[str, Any]) -> str:
    """One line: ``uids: agent 990 (ok), entrypoint 0 (ok)`` or what differs."""
    agent = _judge("agent", declared["agent"], {"agent": observed.get("agent")})
    workload: dict[str, dict[str, Any] | None] = {"entrypoint": observed.get("entrypoint")}
    services = observed.get("services") or {}
    workload.update({f"service {name}": proc for name, proc in services.items()})
    entry = _judge("entrypoint", declared["entrypoint"], workload)
    return f"uids: {agent}, {entry}"


def _declared_line(declared: dict[str, int], why: str) -> str:
    return f"uids: agent {declared['agent']}, entrypoint {declared['entrypoint']} ({why})"


async def vm_uid_status(name: str) -> str:
    """The status line for VM ``name``: cross-checked when it runs, declared otherwise."""
    from mvm.engine.store import StateStore
    from mvm.engine.vm.agent_access import open_vm_agent

    async with StateStore.open() as store:
        rec = await store.get_vm(name)
    if rec is None:
        return "uids: unknown (no such VM)"
    try:
        declared = declared_uids(Image.load(Path(rec.image)).meta)
    except MvmError as exc:
        return f"uids: unknown ({exc.code}: image metadata unreadable)"
    if rec.state != "running":
        return _declared_line(declared, f"VM is {rec.state}: not checked")
    try:
        async with open_vm_agent(name) as client:
            observed = await client.uids()
    except MvmError as exc:
        return _declared_line(declared, f"not checked: {exc.code}")
    return uid_check_line(declared, observed)
