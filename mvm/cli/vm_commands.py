"""VM verbs: run (attached), up (detached), down, ls, status, logs, exec, wait."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import anyio
import trio

from mvm.cli.attach_output import console_offset, pump_console, pump_services
from mvm.cli.hypervisor import resolve_hypervisor
from mvm.cli.images import resolve_image, workload_ir_hash
from mvm.cli.project import Project, find_target
from mvm.engine.base.errors import ConfigError, MvmError, NotFoundError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import vm_dir, write_private
from mvm.engine.engine import Engine, VmHandle
from mvm.engine.images.image import Image
from mvm.engine.request.envvars import env_kernel_arg, parse_env
from mvm.engine.request.mvmtoml import MvmToml
from mvm.engine.request.vmrequest import PortMapping, VmRequest, check_resources, check_vm_name
from mvm.engine.request.volumes import Volume
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm.detached import adopt_detached, start_detached, stop_vm_record

log = get_logger("mvm.cli")


def _request(
    args: argparse.Namespace, image_dir: Path, name: str, mode: str, toml: MvmToml | None
) -> VmRequest:
    """Flags override mvm.toml, which overrides the image's own defaults."""
    ports = tuple(PortMapping.parse(p) for p in args.publish) or (toml.ports if toml else ())
    volumes = tuple(Volume.parse(_host_path(v)) for v in args.volume) or (
        toml.volumes if toml else ()
    )
    return VmRequest(
        name=name,
        image_dir=str(image_dir),
        ports=ports,
        backend=args.backend,
        mode=mode,  # type: ignore[arg-type]
        vcpus=args.vcpus if args.vcpus is not None else (toml.vcpus if toml else None),
        memory_mib=args.memory_mib
        if args.memory_mib is not None
        else (toml.memory_mib if toml else None),
        boot_timeout_s=args.boot_timeout,
        volumes=volumes,
        health_action=args.health_action,
        net=args.net,
        ir_hash=workload_ir_hash(args.image) if args.image else None,
        env=cli_env(args),
        ttl_s=parse_ttl(args.ttl) if getattr(args, "ttl", None) else None,
    )


_TTL = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_TTL_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """``--ttl``: a duration (30s, 10m, 2h, 1d) or plain seconds, above zero."""
    m = _TTL.match(text.strip())
    seconds = float(m.group(1)) * _TTL_UNIT_S[m.group(2)] if m else 0.0
    if seconds <= 0:
        raise ConfigError(
            f"--ttl {text!r} is not a duration above zero",
            code="E_VM_TTL",
            hint="give a duration such as 30s, 10m, 2h, 1d, or seconds",
        )
    return seconds


def cli_env(args: argparse.Namespace) -> dict[str, str]:
    """-e/--env-file (every bad line reported); a bare KEY takes this shell's value."""
    return parse_env(args.env, args.env_file, lookup=os.environ.get)


def _host_path(volume: str) -> str:
    """``./data:/mnt/data:1024``: a relative host path is relative to this folder."""
    host, sep, rest = volume.partition(":")
    if sep and host and not host.startswith(("/", "~")):
        host = str(Path(host).resolve())
    return host + sep + rest


def _precheck(args: argparse.Namespace) -> Project | None:
    """Validate everything cheap before the (possibly slow) image build; pick the
    hypervisor (mvm.toml's when no flag) and say which when it was chosen for you."""
    for p in args.publish:
        PortMapping.parse(p)
    for v in args.volume:
        Volume.parse(_host_path(v))
    env_kernel_arg(cli_env(args))
    if args.name is not None:
        check_vm_name(args.name)
    check_resources(args.vcpus, args.memory_mib)  # the request's own bounds, before a build
    project = find_target(args.image, args.flake, args.profile)
    wanted = args.backend or (project.toml.hypervisor if project and project.toml else "auto")
    if args.backend is None and project and project.toml and "hypervisor" not in _keys(project):
        wanted = "auto"
    args.backend = resolve_hypervisor(wanted)
    if wanted == "auto":  # `mvmctl ls` / `status` show the pick; stderr stays one line
        log.info("run.hypervisor_chosen", backend=args.backend, reason="best available")
    return project


def _keys(project: Project) -> set[str]:
    import tomllib

    if project.toml is None:
        return set()
    try:
        return set(tomllib.loads(project.toml.path.read_text()))
    except (OSError, ValueError):
        return set()


async def _image(args: argparse.Namespace, project: Project | None) -> Image:
    """Build (a cache hit when nothing changed) the project, or resolve IMAGE."""
    command = tuple(getattr(args, "cmd", None) or ()) or None
    if project is None:
        return await resolve_image(args.image or "demo", command=command)
    if command:
        raise ConfigError(
            "`-- CMD` replaces a spec's entrypoint; a project's image comes from its flake",
            code="E_RUN_COMMAND",
            hint="put the command in the flake's entrypoint, or use mvmctl exec",
        )
    from mvm.cli.builder_commands import build_project

    return (await build_project(project.job)).image


def write_mode(name: str, mode: str, **extra: object) -> None:
    """Record the start mode at ~/.mvm/vms/<name>/mode.json (``mvmctl status`` shows it)."""
    path = vm_dir(name) / "mode.json"
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps({"mode": mode, "recorded_at": time.time(), **extra}))


async def cmd_run(args: argparse.Namespace) -> int:
    if args.detach or not args.attached:
        if args.rm:
            raise ConfigError(
                "--rm needs --attached: a detached VM's row is what `mvmctl logs`, "
                "`wait` and `start` read after it ends",
                code="E_RUN_RM_DETACHED",
                hint="add --attached, or remove it later with mvmctl rm NAME",
            )
        return await cmd_up(args)
    project = _precheck(args)
    image = await _image(args, project)
    request = _request(args, image.directory, args.name or image.name, "attached", _toml(project))
    offset = console_offset(vm_dir(request.name) / "console.log")
    detached = False
    try:
        async with Engine.open() as engine:
            vm = await engine.start(request, image)
            write_mode(request.name, "attached", pid=os.getpid())
            _say(
                f"{request.name}: "
                + (f"ready in {vm.boot_seconds:.2f}s" if vm.boot_seconds else "started")
                + "".join(
                    f"; http://{p.host_addr}:{p.host_port} -> guest:{p.guest_port}"
                    for p in request.ports
                )
                + " (Ctrl-C to stop)"
            )
            code, interrupted = await _stream_while_waiting(vm, image, offset)
            detached = vm.detached
    finally:  # every end: a normal exit, a failed boot, Ctrl-C (cancelled)
        if args.rm and not detached:
            await _remove_ended(request.name)
    if detached:
        return await _hand_over(request.name)
    if interrupted:
        _say(f"{request.name}: interrupted; stopped and torn down")
        return 130
    _say(f"{request.name}: exited ({code})")
    return _exit_status(code)


async def _remove_ended(name: str) -> None:
    """``--rm``: forget the VM once it ended (its row, run dir and leases)."""
    from mvm.engine.vm.detached import remove_vm
    from mvm.engine.vm.reconcile import FINAL_STATES

    with anyio.CancelScope(shield=True):
        async with StateStore.open() as store:
            rec = await store.get_vm(name)
            if rec is not None and rec.state in FINAL_STATES:
                await remove_vm(store, rec)


def _exit_status(code: int | None) -> int:
    """The guest's exit status as ours (a negative one, a signal, is 128+N)."""
    if code is None:
        return 0
    return code if 0 <= code < 256 else 128 + (-code % 128)


def _toml(project: Project | None) -> MvmToml | None:
    return project.toml if project is not None else None


async def _stream_while_waiting(vm: VmHandle, image: Image, offset: int) -> tuple[int | None, bool]:
    """Wait as ``_wait_or_interrupt`` does, streaming the app's output meanwhile: the
    command entrypoint's stdout/stderr from the console log (only what follows /init's
    entrypoint line, so other kinds print nothing from it), the services' logs from
    the agent (see ``attach_output``). Once the VM ended the console is drained."""
    console = Path(vm.console_log) if vm.console_log else None
    if console is not None and console != vm_dir(vm.name) / "console.log":
        offset = 0
    done, drained = anyio.Event(), anyio.Event()

    async def console_task(path: Path) -> None:
        try:
            await pump_console(path, offset, done)
        finally:
            drained.set()

    async with anyio.create_task_group() as tg:
        if console is not None:
            tg.start_soon(console_task, console)
        else:
            drained.set()
        if image.meta.get("services", True):
            tg.start_soon(_services_task, vm)
        try:
            code, interrupted = await _wait_or_interrupt(vm)
        finally:
            done.set()
        if not interrupted:
            with anyio.move_on_after(5.0):  # a blocked stdout must not hold us forever
                await drained.wait()
        tg.cancel_scope.cancel()
    return code, interrupted


async def _services_task(vm: VmHandle) -> None:
    with contextlib.suppress(MvmError):  # no agent (the VM is gone): nothing to follow
        await pump_services(await vm.agent())


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
    from mvm.engine.vm.warm_shim import WarmShim

    warm = WarmShim()  # the supervisor imports the engine while this resolves the image
    try:
        project = _precheck(args)
        image = await _image(args, project)
        request = _request(
            args, image.directory, args.name or image.name, "detached", _toml(project)
        )
        info = await start_detached(request, warm=warm)
    finally:
        warm.close()
    write_mode(request.name, "detached", supervisor_pid=info.get("pid"))
    _say(
        f"{request.name}: up in {info.get('boot_s') or 0:.2f}s (detached, supervisor pid "
        f"{info.get('pid')})"
        + "".join(f"; {p.host_addr}:{p.host_port} -> guest:{p.guest_port}" for p in request.ports)
        + f"; mvmctl logs {request.name} -f / mvmctl down {request.name}"
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
            await stop_vm_record(store, rec)
            _say(f"{name}: down")
    return 0


async def cmd_wait(args: argparse.Namespace) -> int:
    """Block until the VM ends, print its exit status. A row that goes away while we wait
    (``down``, ``cleanup``) ended too: its status is in the row's ``vm.removed`` tombstone,
    matched by the creation time of the row we waited on (not a later VM of that name)."""
    deadline = time.monotonic() + args.timeout if args.timeout else None
    seen: VmRecord | None = None
    async with StateStore.open() as store:
        while True:
            rec = await store.get_vm(args.name)
            if seen is not None and (rec is None or rec.created_at != seen.created_at):
                return await _wait_removed(store, seen, args)
            if rec is None:
                raise NotFoundError(f"no VM named {args.name!r}", code="E_VM_NOT_FOUND")
            seen = rec
            if rec.state in ("exited", "failed"):
                return _print_exit(rec.exit_code, args)
            if deadline is not None and time.monotonic() > deadline:
                from mvm.engine.base.errors import RequestTimeout

                raise RequestTimeout(f"{args.name} still running after {args.timeout}s")
            await anyio.sleep(0.25)


async def _wait_removed(store: StateStore, seen: VmRecord, args: argparse.Namespace) -> int:
    tomb = await store.last_removal(seen.name, seen.created_at)
    if tomb is None:  # the event log was pruned in between: say so rather than guess
        raise NotFoundError(
            f"VM {seen.name!r} was removed while waiting; its exit status is not recorded",
            code="E_VM_NOT_FOUND",
        )
    code = tomb.data.get("exit_code")
    return _print_exit(code if isinstance(code, int) else None, args)


def _print_exit(code: int | None, args: argparse.Namespace) -> int:
    if getattr(args, "json", False):
        print(json.dumps({"name": args.name, "exit_code": code}))
    else:
        print(code if code is not None else "")
    return 0 if code in (None, 0) else 1


def _say(text: str) -> None:
    print(text, file=sys.stderr)
