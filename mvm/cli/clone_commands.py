"""Snapshot and clone verbs: snapshot, clone, snapshots.

``mvmctl snapshot NAME [--as SNAP]`` saves a running VM (it keeps running);
``mvmctl clone SNAP --name N [--count K] [-p HOST:GUEST]`` resumes it as K
detached clones (``N`` for one, ``N-1..N-K`` for more), each supervised by its
own shim like ``up`` and all started at once; with ``-p`` and K > 1 clone i
gets host port HOST + i - 1, so each clone answers on its own port.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import anyio

from mvm.engine.base.errors import ConfigError, MvmError
from mvm.engine.request.vmrequest import PortMapping, VmRequest, check_vm_name
from mvm.engine.store import StateStore
from mvm.engine.vm.detached import start_detached_clone
from mvm.engine.vm.snapshots import (
    clone_names,
    default_snapshot_name,
    delete_snapshot,
    list_snapshots,
    load_snapshot,
    take_snapshot,
)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def clone_ports(mappings: list[PortMapping], index: int) -> tuple[PortMapping, ...]:
    """Clone ``index`` (0-based) shifts every host port by ``index``."""
    out = []
    for m in mappings:
        port = m.host_port + index
        if port > 65535:
            raise ConfigError(
                f"host port {port} for clone {index + 1} is out of range", code="E_PORT_SPEC"
            )
        out.append(PortMapping(port, m.guest_port, m.host_addr))
    return tuple(out)


async def cmd_snapshot(args: argparse.Namespace) -> int:
    snap = args.snap or default_snapshot_name(args.name)
    t0 = time.monotonic()
    async with StateStore.open() as store:
        meta = await take_snapshot(store, args.name, snap)
    _say(
        f"{args.name}: snapshot {meta.name} ({meta.state_bytes / 2**20:.1f} MiB) in "
        f"{time.monotonic() - t0:.2f}s; {args.name} keeps running"
    )
    print(meta.directory)
    return 0


async def cmd_clone(args: argparse.Namespace) -> int:
    meta = load_snapshot(args.snapshot)
    check_vm_name(args.name)
    names = clone_names(args.name, args.count)
    mappings = [PortMapping.parse(p) for p in args.publish]
    requests = [
        VmRequest(
            name=name,
            image_dir=str(meta.image),
            ports=clone_ports(mappings, i),
            backend=meta.backend,
            mode="detached",
            boot_timeout_s=args.boot_timeout,
        )
        for i, name in enumerate(names)
    ]
    errors: dict[str, MvmError] = {}
    t0 = time.monotonic()

    async def one(request: VmRequest) -> None:
        try:
            info = await start_detached_clone(request, meta.name)
        except MvmError as exc:
            errors[request.name] = exc
            _say(f"{request.name}: failed: {exc.one_line()}")
            return
        _say(
            f"{request.name}: cloned from {meta.name} in {info.get('boot_s') or 0:.2f}s "
            f"(detached, supervisor pid {info.get('pid')})"
            + "".join(
                f"; {p.host_addr}:{p.host_port} -> guest:{p.guest_port}" for p in request.ports
            )
        )

    async with anyio.create_task_group() as tg:
        for request in requests:
            tg.start_soon(one, request)
    if len(names) > 1:
        _say(f"{len(names) - len(errors)}/{len(names)} clones up in {time.monotonic() - t0:.2f}s")
    if errors:
        raise next(iter(errors.values()))
    return 0


async def cmd_snapshots(args: argparse.Namespace) -> int:
    for name in args.rm:
        delete_snapshot(name)
        _say(f"snapshot {name}: removed")
    if args.rm:
        return 0
    snaps = list_snapshots()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": s.name,
                        "source": s.source,
                        "backend": s.backend,
                        "image": str(s.image),
                        "vcpus": s.vcpus,
                        "memory_mib": s.memory_mib,
                        "accel": s.accel,
                        "state_bytes": s.state_bytes,
                        "created_at": s.created_at,
                    }
                    for s in snaps
                ],
                indent=2,
            )
        )
        return 0
    fmt = "{:<24} {:<16} {:<8} {:>9} {}"
    print(fmt.format("SNAPSHOT", "SOURCE", "BACKEND", "SIZE", "CREATED"))
    for s in snaps:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created_at))
        print(fmt.format(s.name, s.source, s.backend, f"{s.state_bytes / 2**20:.1f}M", created))
    return 0
