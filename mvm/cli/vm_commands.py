"""VM verbs: run (attached), up (detached), down, ls, status, logs, exec, wait."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import structlog
import trio

from mvm.backends.registry import get_backend
from mvm.cli.images import resolve_image, workload_ir_hash
from mvm.engine.agent_access import open_vm_agent
from mvm.engine.detached import adopt_detached, start_detached, stop_vm_record
from mvm.engine.engine import Engine, VmHandle
from mvm.engine.errors import MvmError, NotFoundError
from mvm.engine.paths import vm_dir
from mvm.engine.process import is_same_process
from mvm.engine.reconcile import owner_alive
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.uid_check import vm_uid_status
from mvm.engine.vmrequest import PortMapping, VmRequest, check_vm_name
from mvm.engine.volumes import Volume

log = structlog.get_logger("mvm.cli")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for verb, helptext in (
        ("run", "boot an image attached to this terminal (Ctrl-C stops it)"),
        ("up", "boot an image detached (survives this command)"),
    ):
        p = sub.add_parser(verb, help=helptext)
        p.add_argument(
            "image",
            nargs="?",
            default="demo",
            help="demo | demo-dev | SPEC.json | IMAGE_DIR (default: demo)",
        )
        p.add_argument("--name", help="VM name (default: the image name)")
        p.add_argument(
            "-p",
            "--publish",
            action="append",
            default=[],
            metavar="[ADDR:]HOST:GUEST",
            help="forward a host TCP port to a guest port (repeatable)",
        )
        p.add_argument(
            "-v",
            "--volume",
            action="append",
            default=[],
            metavar="HOST:GUEST[:SIZE_MB]",
            help="host folder as a guest volume: read-only, or read-write persistent with SIZE_MB",
        )
        p.add_argument(
            "--health-action",
            choices=("none", "restart-service", "restart-vm"),
            default="none",
            help="what to do when a service's health check turns unhealthy",
        )
        p.add_argument(
            "--net",
            choices=("none", "tap"),
            default="none",
            help="tap: a real NIC on bridge br-mvm with NAT (root); default: ports via the agent",
        )
        p.add_argument("--backend", default="qemu")
        p.add_argument("--vcpus", type=int)
        p.add_argument("--memory", type=int, dest="memory_mib", metavar="MIB")
        p.add_argument("--boot-timeout", type=float, default=90.0)
        if verb == "run":
            p.add_argument(
                "--attached",
                action="store_true",
                default=True,
                help="(default) tie the VM to this command",
            )
            p.add_argument("-d", "--detach", action="store_true", help="same as `up`")
        p.set_defaults(func=cmd_run if verb == "run" else cmd_up)

    p = sub.add_parser("down", help="stop a VM and remove its state")
    p.add_argument("names", nargs="+")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("ls", help="list VMs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ls)

    p = sub.add_parser("status", help="show one VM")
    p.add_argument("name")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("logs", help="print a VM's serial console log")
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(func=cmd_logs)

    p = sub.add_parser("wait", help="block until a VM exits; print its exit status")
    p.add_argument("name")
    p.add_argument("--timeout", type=float)
    p.set_defaults(func=cmd_wait)


def _request(args: argparse.Namespace, image_dir: Path, name: str, mode: str) -> VmRequest:
    return VmRequest(
        name=name,
        image_dir=str(image_dir),
        ports=tuple(PortMapping.parse(p) for p in args.publish),
        backend=args.backend,
        mode=mode,  # type: ignore[arg-type]
        vcpus=args.vcpus,
        memory_mib=args.memory_mib,
        boot_timeout_s=args.boot_timeout,
        volumes=tuple(Volume.parse(v) for v in args.volume),
        health_action=args.health_action,
        net=args.net,
        ir_hash=workload_ir_hash(args.image),
    )


def _precheck(args: argparse.Namespace) -> None:
    """Validate everything cheap before the (possibly slow) image build."""
    for p in args.publish:
        PortMapping.parse(p)
    for v in args.volume:
        Volume.parse(v)
    if args.name is not None:
        check_vm_name(args.name)
    get_backend(args.backend)


async def cmd_run(args: argparse.Namespace) -> int:
    if args.detach:
        return await cmd_up(args)
    _precheck(args)
    image = await resolve_image(args.image)
    request = _request(args, image.directory, args.name or image.name, "attached")
    async with Engine.open() as engine:
        vm = await engine.start(request, image)
        _say(
            f"{request.name}: ready in {vm.boot_seconds or 0:.2f}s"
            + "".join(
                f"; http://{p.host_addr}:{p.host_port} -> guest:{p.guest_port}"
                for p in request.ports
            )
            + " (Ctrl-C to stop)"
        )
        code, interrupted = await _wait_or_interrupt(vm)
        detached = vm.detached
    if interrupted:
        _say(f"{request.name}: interrupted; stopped and torn down")
        return 130
    if detached:
        return await _hand_over(request.name)
    _say(f"{request.name}: exited ({code})")
    return 0 if code in (None, 0) else 1


async def _wait_or_interrupt(vm: VmHandle) -> tuple[int | None, bool]:
    """Wait for the VM; Ctrl-C/SIGTERM stop it gracefully (the guest syncs and powers
    off, as for ``down``) instead of cancelling it mid-write."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:
            interrupted = False

            async def on_signal() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    await vm.stop("interrupted")
                    return

            tg.start_soon(on_signal)
            code = await vm.wait()
            tg.cancel_scope.cancel()
    return code, interrupted


async def _hand_over(name: str) -> int:
    """After ``mvmctl detach``: a shim adopts the still-running VM, then this command ends."""
    try:
        info = await adopt_detached(name)
    except MvmError as exc:
        if exc.code != "E_ALREADY_ADOPTED":
            raise
        _say(f"{name}: detached (another engine adopted it)")
        return 0
    _say(f"{name}: detached; now supervised by pid {info.get('pid')}")
    return 0


async def cmd_up(args: argparse.Namespace) -> int:
    _precheck(args)
    image = await resolve_image(args.image)
    request = _request(args, image.directory, args.name or image.name, "detached")
    info = await start_detached(request)
    _say(
        f"{request.name}: up in {info.get('boot_s') or 0:.2f}s (detached, supervisor pid "
        f"{info.get('pid')})"
        + "".join(f"; {p.host_addr}:{p.host_port} -> guest:{p.guest_port}" for p in request.ports)
    )
    return 0


async def cmd_down(args: argparse.Namespace) -> int:
    async with StateStore.open() as store:
        for name in args.names:
            rec = await store.get_vm(name)
            if rec is None:
                raise NotFoundError(
                    f"no VM named {name!r}", code="E_VM_NOT_FOUND", hint="see mvmctl ls"
                )
            await _power_off_guest(rec)
            await stop_vm_record(store, rec)
            _say(f"{name}: down")
    return 0


async def _power_off_guest(rec: VmRecord, grace: float = 10.0) -> None:
    """Ask the guest to sync and power off before its VMM is stopped.

    Stopping the VMM alone (QMP quit / SIGTERM) drops whatever the guest still
    holds in its page cache, so a file just written to a read-write volume was
    empty after the next ``up``. /init's poweroff syncs first. A guest that does
    not answer is stopped the hard way by ``stop_vm_record`` as before."""
    if rec.state != "running" or not is_same_process(rec.pid, rec.pid_start_time):
        return
    try:
        async with open_vm_agent(rec.name, timeout=5.0) as client:
            await client.shutdown(timeout=5.0)
    except MvmError as exc:
        log.info("down.no_guest_poweroff", vm=rec.name, code=exc.code)
        return
    with anyio.move_on_after(grace):
        while is_same_process(rec.pid, rec.pid_start_time):
            await anyio.sleep(0.05)


def _row(rec: VmRecord, ports: list[str]) -> dict[str, Any]:
    uptime = (time.time() - rec.started_at) if rec.started_at and rec.state == "running" else None
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
        "health": json.loads(rec.health) if rec.health else {},
    }


async def _rows() -> list[dict[str, Any]]:
    async with Engine.open() as engine:
        recs = await engine.list_vms()
        out = []
        for rec in recs:
            ports = [
                f"{p.host_addr}:{p.host_port}->{p.guest_port}"
                for p in await engine.store.list_ports(rec.name)
            ]
            out.append(_row(rec, ports))
        return out


async def cmd_ls(args: argparse.Namespace) -> int:
    rows = await _rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    fmt = "{:<16} {:<16} {:<9} {:<8} {:>9} {:<11} {:<16} {}"
    print(fmt.format("NAME", "BACKEND", "MODE", "STATE", "UPTIME", "ACCESS", "HEALTH", "PORTS"))
    for r in rows:
        up = f"{r['uptime_s']:.0f}s" if r["uptime_s"] is not None else "-"
        print(
            fmt.format(
                r["name"],
                r["backend"],
                r["mode"],
                r["state"],
                up,
                r["access"],
                health_summary(r["health"]) if r["state"] == "running" else "-",
                ",".join(r["ports"]) or "-",
            )
        )
    return 0


def health_summary(health: dict[str, str]) -> str:
    """One word for the table: the worst service state, naming the unhealthy ones."""
    if not health:
        return "-"
    bad = sorted(name for name, state in health.items() if state == "unhealthy")
    if bad:
        return "unhealthy:" + ",".join(bad)
    return "healthy" if all(s == "healthy" for s in health.values()) else "unknown"


async def cmd_status(args: argparse.Namespace) -> int:
    for r in await _rows():
        if r["name"] == args.name:
            print(json.dumps(r, indent=2))
            print(await vm_uid_status(args.name))  # declared uids vs the guest's /proc
            return 0
    raise NotFoundError(f"no VM named {args.name!r}", code="E_VM_NOT_FOUND")


async def cmd_logs(args: argparse.Namespace) -> int:
    """The serial console log, then the services' logs (``[service] line``) as the
    guest agent reports them; with ``-f`` both are followed until the VM is down."""
    log_path = vm_dir(args.name) / "console.log"
    if not log_path.exists():
        raise NotFoundError(f"no console log for {args.name!r}", code="E_VM_NOT_FOUND")
    if not args.follow:
        _write(log_path.read_bytes())
        await _service_logs(args.name, follow=False)
        return 0
    async with anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(_service_logs, args.name, follow=True))
        await _follow_console(args.name, log_path)
        tg.cancel_scope.cancel()
    return 0


async def _follow_console(name: str, log_path: Path) -> None:
    offset = 0
    while True:
        with contextlib.suppress(OSError):  # down removes the run dir under us
            data = log_path.read_bytes()[offset:]
            offset += len(data)
            _write(data)
        async with StateStore.open() as store:
            rec = await store.get_vm(name)
        if rec is None or rec.state in ("exited", "failed"):
            return
        await anyio.sleep(0.5)


async def _service_logs(name: str, *, follow: bool) -> None:
    """Service lines live in the guest; a VM that is not running has none to give."""
    try:
        async with (
            open_vm_agent(name) as client,
            client.follow_logs(follow=follow) as lines,
        ):
            async for line in lines:
                _write(f"[{line.service}] {line.line}\n".encode(errors="replace"))
    except* MvmError as group:  # the link dies with the VM, inside the client's tasks
        codes = [e.code for e in group.exceptions if isinstance(e, MvmError)]
        log.debug("logs.service_logs_ended", vm=name, codes=codes)


def _write(data: bytes) -> None:
    if data:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()


async def cmd_wait(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout if args.timeout else None
    async with StateStore.open() as store:
        while True:
            rec = await store.get_vm(args.name)
            if rec is None:
                raise NotFoundError(f"no VM named {args.name!r}", code="E_VM_NOT_FOUND")
            if rec.state in ("exited", "failed"):
                print(rec.exit_code if rec.exit_code is not None else "")
                return 0 if rec.exit_code in (None, 0) else 1
            if deadline is not None and time.monotonic() > deadline:
                from mvm.engine.errors import RequestTimeout

                raise RequestTimeout(f"{args.name} still running after {args.timeout}s")
            await anyio.sleep(0.25)


def _say(text: str) -> None:
    print(text, file=sys.stderr)
