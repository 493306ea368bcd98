"""Docker-like lifecycle verbs: stop (keeps the row), start, restart, rm, kill, inspect.

``stop`` goes through the one stop path (``engine.vm.detached.stop_vm``: ask the owner,
then settle) but keeps the VM's row, exit status and run dir, so ``ls`` shows it
exited and ``logs`` still reads its console. ``start`` boots such a VM again, detached,
from what its row recorded (``RuntimeVM.record_spec``): image, ports, volumes (a
persistent volume's image is reused, so its files survive), net, vCPUs/memory and
health action. ``rm`` forgets stopped VMs; ``down`` stays stop + rm.

A verb given several names does what it can for each and reports every failure
(one coded line each); the exit status is the first failure's.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs

from mvm.engine.base.errors import ConfigError, ConflictError, MvmError, NotFoundError
from mvm.engine.base.process import is_same_process, kill_verified
from mvm.engine.request.vmrequest import PortMapping, VmRequest
from mvm.engine.request.volumes import Volume
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm.detached import remove_vm, start_detached, stop_vm
from mvm.engine.vm.owner import Owner
from mvm.engine.vm.reconcile import FINAL_STATES, settle

KILL_WAIT_S = 15.0


def _say(text: str) -> None:
    print(text, file=sys.stderr)


async def _record(store: StateStore, name: str) -> VmRecord:
    rec = await store.get_vm(name)
    if rec is None:
        raise NotFoundError(f"no VM named {name!r}", code="E_VM_NOT_FOUND", hint="see mvmctl ls")
    return rec


async def _each(names: list[str], verb: Callable[[StateStore, str], Awaitable[None]]) -> int:
    """Run ``verb`` for every name; every failure is one coded line on stderr."""
    errors: list[MvmError] = []
    async with StateStore.open() as store:
        for name in names:
            try:
                await verb(store, name)
            except MvmError as exc:
                errors.append(exc)
    for error in errors:
        print(error.one_line(), file=sys.stderr)
    return errors[0].exit_status if errors else 0


# -- stop / start / restart ------------------------------------------------------------------


async def _stop(store: StateStore, name: str, grace: float) -> VmRecord:
    rec = await _record(store, name)
    if rec.state in FINAL_STATES:
        return rec
    return await stop_vm(store, rec, grace=grace)


async def cmd_stop(args: argparse.Namespace) -> int:
    async def stop(store: StateStore, name: str) -> None:
        rec = await _record(store, name)
        if rec.state in FINAL_STATES:
            _say(f"{name}: already {rec.state} ({rec.exit_reason or '-'})")
            return
        final = await stop_vm(store, rec, grace=args.grace)
        _say(f"{name}: stopped ({final.exit_reason or final.state}); mvmctl start {name}")

    return await _each(args.names, stop)


def request_from_record(rec: VmRecord) -> VmRequest:
    """The VmRequest that boots ``rec`` again as it was recorded, detached."""
    spec: dict[str, Any] = json.loads(rec.spec_json or "{}")
    ports = tuple(PortMapping.parse(str(p).replace("->", ":")) for p in spec.get("ports") or ())
    volumes = tuple(Volume.parse(str(v)) for v in spec.get("volumes") or ())
    fields: dict[str, Any] = {
        key: spec[key]
        for key in ("vcpus", "memory_mib", "boot_timeout_s", "stop_grace_s", "health_action")
        if spec.get(key) is not None
    }
    return VmRequest(
        name=rec.name,
        image_dir=str(spec.get("image") or rec.image),
        ports=ports,
        backend=rec.backend,
        mode="detached",
        volumes=volumes,
        net=spec.get("net") or "none",
        ir_hash=spec.get("ir_hash"),
        **fields,
    )


async def _start(store: StateStore, name: str) -> dict[str, Any] | None:
    rec = await _record(store, name)
    if rec.state not in FINAL_STATES:
        return None
    return await start_detached(request_from_record(rec))


async def cmd_start(args: argparse.Namespace) -> int:
    async def start(store: StateStore, name: str) -> None:
        info = await _start(store, name)
        if info is None:
            _say(f"{name}: already running")
            return
        _say(
            f"{name}: started in {info.get('boot_s') or 0:.2f}s (detached, supervisor pid "
            f"{info.get('pid')})"
        )

    return await _each(args.names, start)


async def cmd_restart(args: argparse.Namespace) -> int:
    async def restart(store: StateStore, name: str) -> None:
        await _stop(store, name, args.grace)
        info = await _start(store, name)
        assert info is not None  # stopped just above
        _say(
            f"{name}: restarted in {info.get('boot_s') or 0:.2f}s (supervisor pid "
            f"{info.get('pid')})"
        )

    return await _each(args.names, restart)


# -- rm / kill -------------------------------------------------------------------------------


async def cmd_rm(args: argparse.Namespace) -> int:
    async def rm(store: StateStore, name: str) -> None:
        rec = await _record(store, name)
        if rec.state not in FINAL_STATES:
            if not args.force:
                raise ConflictError(
                    f"VM {name!r} is {rec.state}; rm removes only stopped VMs",
                    code="E_VM_RUNNING",
                    hint=f"stop it first (mvmctl stop {name}) or use mvmctl rm -f {name}",
                )
            rec = await stop_vm(store, rec)
        await remove_vm(store, rec)
        _say(f"{name}: removed")

    return await _each(args.names, rm)


def parse_signal(text: str) -> signal.Signals:
    """``KILL``, ``SIGKILL``, ``kill`` or ``9``."""
    try:
        if text.isdigit():
            return signal.Signals(int(text))
        return signal.Signals["SIG" + text.upper().removeprefix("SIG")]
    except (KeyError, ValueError):
        raise ConfigError(
            f"unknown signal {text!r}", code="E_SIGNAL", hint="use a name or number: KILL, TERM, 9"
        ) from None


async def _ended(store: StateStore, name: str, timeout: float) -> VmRecord | None:
    """The row once it is final (its owner recorded the end), else None."""
    deadline = time.monotonic() + timeout
    while True:
        rec = await store.get_vm(name)
        if rec is None or rec.state in FINAL_STATES or time.monotonic() > deadline:
            return rec if rec is None or rec.state in FINAL_STATES else None
        await anyio.sleep(0.1)


async def cmd_kill(args: argparse.Namespace) -> int:
    sig = parse_signal(args.signal)

    async def kill(store: StateStore, name: str) -> None:
        rec = await _record(store, name)
        if rec.state in FINAL_STATES or rec.pid is None:
            raise ConflictError(f"VM {name!r} is {rec.state}, not running", code="E_VM_NOT_RUNNING")
        if not kill_verified(rec.pid, rec.pid_start_time, sig):
            raise ConflictError(f"the VMM of {name!r} is already gone", code="E_VM_NOT_RUNNING")
        deadline = time.monotonic() + 5.0
        while is_same_process(rec.pid, rec.pid_start_time) and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        if is_same_process(rec.pid, rec.pid_start_time):
            _say(f"{name}: sent {sig.name}; the VMM is still running")
            return
        owner = Owner.parse(rec.owner)
        final = await _ended(store, name, KILL_WAIT_S if owner and owner.alive else 0.0)
        if final is None:  # nobody (alive) records the end: settle it here
            fresh = await store.get_vm(name)
            if fresh is not None and fresh.state not in FINAL_STATES:
                final = await settle(store, fresh, reason=f"VMM killed by {sig.name}")
        _say(f"{name}: killed ({final.exit_reason if final else sig.name})")

    return await _each(args.names, kill)


# -- inspect / completion --------------------------------------------------------------------


async def cmd_inspect(args: argparse.Namespace) -> int:
    """Like ``docker inspect``: a JSON array, one object per VM (row, ports, spec)."""
    out: list[dict[str, Any]] = []

    async def inspect(store: StateStore, name: str) -> None:
        rec = await _record(store, name)
        row = attrs.asdict(rec)
        spec = json.loads(row.pop("spec_json") or "{}")
        health = json.loads(row["health"]) if row.get("health") else {}
        ports = [
            {"host_addr": p.host_addr, "host_port": p.host_port, "guest_port": p.guest_port}
            for p in await store.list_ports(name)
        ]
        from mvm.engine.vm.uid_check import image_security  # reads the image's meta

        security = image_security(rec.image)  # seccomp_tier, uids (services included)
        out.append({**row, "health": health, "ports": ports, "spec": spec, **security})

    status = await _each(args.names, inspect)
    if out:
        print(json.dumps(out, indent=2, sort_keys=True))
    return status


async def cmd_completion(args: argparse.Namespace) -> int:
    from mvm.cli.app import build_parser
    from mvm.cli.completion import script

    sys.stdout.write(script(build_parser(), args.shell))
    return 0
