"""`mvmctl status`'s uid cross-check: the image's declared uids against the guest's /proc.

mvm-meta.json carries the resolved ``uids`` (``passthru.mvm.uids`` of mkGuest):
the agent's, the entrypoint's and each service's (``services``: a sealed image's
services have uids of their own; images built before that record none, and their
services run as the entrypoint). The guest agent's ``uids`` request reads the
``Uid:`` lines of /proc/<pid>/status for itself, the command/shell entrypoint
and every supervised service. A process counts as matching only if its real,
effective, saved and filesystem uids all equal the declared one (a half-dropped
process is exactly what the check is for).
"""

from __future__ import annotations

from collections.abc import Mapping
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


def declared_service_uids(meta: dict[str, Any]) -> dict[str, int]:
    """``{service: uid}`` from mvm-meta.json; empty for images that record none."""
    uids = meta.get("uids") or meta.get("mvm", {}).get("uids") or {}
    services = uids.get("services") or {}
    return {str(name): int(uid) for name, uid in services.items()}


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


def uid_check_line(
    declared: dict[str, int],
    observed: dict[str, Any],
    services: Mapping[str, int] | None = None,
) -> str:
    """One line: ``uids: agent 990 (ok), entrypoint 0 (ok)`` or what differs; a service
    with a uid of its own (``services``) is judged on its own (``service web 1001 (ok)``),
    the others with the entrypoint."""
    own = {n: u for n, u in (services or {}).items() if u != declared["entrypoint"]}
    agent = _judge("agent", declared["agent"], {"agent": observed.get("agent")})
    workload: dict[str, dict[str, Any] | None] = {"entrypoint": observed.get("entrypoint")}
    running = observed.get("services") or {}
    workload.update({f"service {n}": p for n, p in running.items() if n not in own})
    parts = [agent, _judge("entrypoint", declared["entrypoint"], workload)]
    for name, uid in sorted(own.items()):
        parts.append(_judge(f"service {name}", uid, {f"service {name}": running.get(name)}))
    return "uids: " + ", ".join(parts)


def _declared_line(declared: dict[str, int], services: Mapping[str, int], why: str) -> str:
    own = "".join(
        f", service {n} {u}" for n, u in sorted(services.items()) if u != declared["entrypoint"]
    )
    return f"uids: agent {declared['agent']}, entrypoint {declared['entrypoint']}{own} ({why})"


def image_security(image_dir: str) -> dict[str, Any]:
    """What ``inspect`` and ``status`` show of an image's guest hardening: its seccomp
    tier and declared uids (services included); ``{}`` when the image is unreadable."""
    try:
        image = Image.load(Path(image_dir))
    except MvmError:
        return {}
    meta = image.meta
    uids = {**declared_uids(meta), "services": declared_service_uids(meta)}
    return {"seccomp_tier": image.seccomp_tier, "uids": uids}


async def vm_uid_status(name: str) -> str:
    """The status line for VM ``name``: cross-checked when it runs, declared otherwise."""
    from mvm.engine.store import StateStore
    from mvm.engine.vm.agent_access import open_vm_agent

    async with StateStore.open() as store:
        rec = await store.get_vm(name)
    if rec is None:
        return "uids: unknown (no such VM)"
    try:
        meta = Image.load(Path(rec.image)).meta
        declared, services = declared_uids(meta), declared_service_uids(meta)
    except MvmError as exc:
        return f"uids: unknown ({exc.code}: image metadata unreadable)"
    if rec.state != "running":
        return _declared_line(declared, services, f"VM is {rec.state}: not checked")
    try:
        async with open_vm_agent(name) as client:
            observed = await client.uids()
    except MvmError as exc:
        return _declared_line(declared, services, f"not checked: {exc.code}")
    return uid_check_line(declared, observed, services)
