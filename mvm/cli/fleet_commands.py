"""``mvmctl fleet up|ls|exec|logs|down|nodes``: thin edges over ``mvm.fleet.Fleet``."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

import attrs

from mvm.cli.images import resolve_image
from mvm.engine.base.errors import ConfigError
from mvm.engine.request.vmrequest import PortMapping, VmRequest

if TYPE_CHECKING:
    from mvm.fleet import Fleet


def _fleet(args: argparse.Namespace) -> AbstractAsyncContextManager[Fleet]:
    from mvm.fleet import Fleet  # Ray loads only for fleet commands

    return Fleet.connect(args.address)


def _labels(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"label {pair!r} is not KEY=VALUE", code="E_CONFIG")
        out[key] = value
    return out


async def cmd_up(args: argparse.Namespace) -> int:
    labels = _labels(args.label)
    ports = tuple(PortMapping.parse(p) for p in args.publish)
    image = await resolve_image(args.image, quiet=True)
    request = VmRequest(
        name=args.name or image.name,
        image_dir=str(image.directory),
        ports=ports,
        backend=args.backend,
        mode="detached",
        vcpus=args.vcpus,
        memory_mib=args.memory_mib,
    )
    async with _fleet(args) as fleet:
        vm = await fleet.start(request, strategy=args.strategy, labels=labels, restart=args.restart)
        entry = await vm.entry()
        forwards = "".join(
            f"; {entry.node_address}:{p.host_port} -> guest:{p.guest_port}" for p in ports
        )
        print(
            f"{vm.name}: up on node {(entry.node_id or '?')[:8]} ({entry.node_address}){forwards}",
            file=sys.stderr,
        )
    return 0


async def cmd_ls(args: argparse.Namespace) -> int:
    async with _fleet(args) as fleet:
        infos = await fleet.list()
    if args.json:
        for info in infos:
            print(json.dumps(attrs.asdict(info)))
        return 0
    print(f"{'NAME':<20} {'STATE':<8} {'NODE':<10} {'ADDRESS':<16} {'GEN':>3}  PORTS / REASON")
    for i in infos:
        tail = ", ".join(i.ports) or (i.reason or "")
        print(
            f"{i.name:<20} {i.state:<8} {(i.node_id or '-')[:8]:<10} "
            f"{i.node_address or '-':<16} {i.generation:>3}  {tail}"
        )
    return 0


async def cmd_exec(args: argparse.Namespace) -> int:
    argv = [a for a in args.cmd if a != "--"] if args.cmd[:1] == ["--"] else list(args.cmd)
    if not argv:
        raise ConfigError("no command was given", code="E_EXEC_ARGV")
    async with _fleet(args) as fleet:
        res = await fleet.vm(args.name).exec(argv)
    sys.stdout.buffer.write(res.stdout)
    sys.stderr.buffer.write(res.stderr)
    return res.code if res.code is not None else 128 + (res.signal or 0)


async def cmd_logs(args: argparse.Namespace) -> int:
    async with _fleet(args) as fleet:
        lines = await fleet.vm(args.name).logs(args.tail)
    for line in lines:
        print(line)
    return 0


async def cmd_down(args: argparse.Namespace) -> int:
    async with _fleet(args) as fleet:
        code = await fleet.vm(args.name).stop()
    print(f"{args.name}: down" + (f" ({code})" if code is not None else ""), file=sys.stderr)
    return 0


async def cmd_nodes(args: argparse.Namespace) -> int:
    async with _fleet(args) as fleet:
        nodes = await fleet.nodes()
    if args.json:
        for n in nodes:
            print(json.dumps(attrs.asdict(n)))
        return 0
    print(f"{'NODE':<10} {'ADDRESS':<16} {'ALIVE':<6} {'VCPUS':>5} {'MIB':>7}  LABELS")
    for n in nodes:
        labels = ",".join(f"{k}={v}" for k, v in n.labels)
        print(
            f"{n.node_id[:8]:<10} {n.address:<16} {'yes' if n.alive else 'no':<6} "
            f"{n.vcpus:>5} {n.memory_mib:>7}  {labels}"
        )
    return 0
