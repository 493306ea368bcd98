"""``mvmctl logs``: a VM's app output (default) or raw console, and its services' logs.

The default view is what the app wrote: a command entrypoint's stdout/stderr from
the console log (without dmesg, /init's and the agent's lines), then every service's
log lines (``[svc] line``) from the guest agent. ``--all`` / ``--console`` prints the
raw console instead of the entrypoint's part of it; ``--service S`` only S's log.
``--since`` and ``--tail`` select from that view, ``--timestamps`` prefixes each line
with its (estimated, see ``log_view``) time, ``-f`` keeps following until the VM ends.

Service lines live in the guest (the agent reads its log files): a VM that is not
running has none to give, and they carry no time, so ``--since`` leaves out the ones
already written and keeps those that arrive while following (stamped on arrival).

Kept apart from ``vm_commands`` so that ``logs`` imports no engine, backend or actor.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import anyio
import attrs
import structlog

from mvm.cli.log_view import ConsoleFilter, LogLine, count_by_source, select
from mvm.cli.since import parse_since
from mvm.engine.base.errors import MvmError, NotFoundError
from mvm.engine.base.paths import vm_dir
from mvm.engine.store import StateStore, VmRecord

log = structlog.get_logger("mvm.cli")

_POLL_S = 0.25
_FATAL = ("E_LOGS_ARGS",)  # a bad --service is the user's error, not a VM that is gone


async def cmd_logs(args: argparse.Namespace) -> int:
    name: str = args.name
    log_path = vm_dir(name) / "console.log"
    async with StateStore.open() as store:
        rec = await store.get_vm(name)
    if rec is None and not log_path.exists():
        raise NotFoundError(f"no VM named {name!r}", code="E_VM_NOT_FOUND", hint="see mvmctl ls")
    since = parse_since(args.since, code="E_LOGS_SINCE") if args.since else None
    if rec is not None and args.service is not None:
        _check_service(rec, args.service)
    started_at = rec.started_at if rec is not None else None
    console = ConsoleFilter(app_only=not args.all)
    offset, lines = 0, []
    if args.service is None:
        data = _read(log_path)
        offset = len(data)
        console.feed(data, final=not args.follow)
        lines = console.take(started_at)
    running = rec is not None and rec.state == "running"
    services = await _service_snapshot(name, args.service) if running else []
    if args.service is not None and not running:
        _note(f"{name} is not running: its services' logs live in the guest")
    shown = select([*lines, *services], since=since, tail=args.tail)
    for line in shown:
        _print(line, args.timestamps)
    if not shown and not args.all and args.service is None and since is None and args.tail != 0:
        _note(f"{name}: no app output yet (the raw console: mvmctl logs {name} --all)")
    if not args.follow:
        return 0
    async with anyio.create_task_group() as tg:
        if running:
            tg.start_soon(_follow_services, name, args.service, count_by_source(services), args)
        if args.service is None:
            await _follow_console(name, log_path, offset, console, args.timestamps)
        else:
            await _until_down(name)
        tg.cancel_scope.cancel()
    return 0


def _check_service(rec: VmRecord, service: str) -> None:
    """A service the image does not have is the user's typo, not an empty log: say so
    before asking the guest (whose agent only refuses names that are not names)."""
    import json

    from mvm.engine.base.errors import ConfigError

    try:
        meta = json.loads((Path(rec.image) / "mvm-meta.json").read_text())
    except (OSError, ValueError):
        return  # the image is gone or unreadable: let the agent answer
    services = meta.get("services") if isinstance(meta, dict) else None
    if not isinstance(services, list) or service in services:
        return
    have = ", ".join(str(s) for s in services) or "none"
    raise ConfigError(
        f"{rec.name} has no service {service!r} (its services: {have})", code="E_LOGS_SERVICE"
    )


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # a VM whose run dir is gone (or not there yet): no console lines
        return b""


async def _service_snapshot(name: str, service: str | None) -> list[LogLine]:
    """Every line the services logged so far (none when the agent cannot be reached)."""
    from mvm.engine.vm.agent_access import open_vm_agent  # the agent client: logs only

    out: list[LogLine] = []
    try:
        async with open_vm_agent(name) as client, client.follow_logs(service, follow=False) as it:
            async for entry in it:
                out.append(LogLine(entry.service, entry.line))
    except* MvmError as group:
        _raise_fatal(group)
        log.debug("logs.services_unreachable", vm=name, codes=_codes(group))
    return out


async def _follow_services(
    name: str, service: str | None, seen: dict[str, int], args: argparse.Namespace
) -> None:
    """Follow the services' logs; the agent replays each file from its start, so the
    lines the snapshot already had (``seen`` per service) are skipped."""
    from mvm.engine.vm.agent_access import open_vm_agent

    skip = dict(seen)
    try:
        async with open_vm_agent(name) as client, client.follow_logs(service, follow=True) as it:
            async for entry in it:
                if skip.get(entry.service, 0) > 0:
                    skip[entry.service] -= 1
                    continue
                _print(LogLine(entry.service, entry.line, ts=time.time()), args.timestamps)
    except* MvmError as group:  # the link dies with the VM
        _raise_fatal(group)
        log.debug("logs.service_logs_ended", vm=name, codes=_codes(group))


async def _follow_console(
    name: str, path: Path, offset: int, console: ConsoleFilter, timestamps: bool
) -> None:
    """New console bytes from ``offset`` on, through the same filter, until the VM ends."""
    while True:
        done = await _ended(name)  # read before the file: its last bytes precede it
        data = b""
        with contextlib.suppress(OSError):  # down removes the run dir under us
            if path.stat().st_size < offset:  # a new boot recreated the file
                offset = 0
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read()
        offset += len(data)
        console.feed(data, final=done)
        now = time.time()
        for line in console.take(None):
            _print(attrs.evolve(line, ts=now), timestamps)
        if done:
            return
        await anyio.sleep(_POLL_S)


async def _until_down(name: str) -> None:
    while not await _ended(name):
        await anyio.sleep(_POLL_S)


async def _ended(name: str) -> bool:
    async with StateStore.open() as store:
        rec: VmRecord | None = await store.get_vm(name)
    return rec is None or rec.state in ("exited", "failed")


def _raise_fatal(group: BaseExceptionGroup[MvmError]) -> None:
    for exc in group.exceptions:
        if isinstance(exc, MvmError) and exc.code in _FATAL:
            raise exc


def _codes(group: BaseExceptionGroup[MvmError]) -> list[str]:
    return [e.code for e in group.exceptions if isinstance(e, MvmError)]


def _print(line: LogLine, timestamps: bool) -> None:
    stream = sys.stderr if line.fd == 2 else sys.stdout
    try:
        stream.write(line.render(timestamps=timestamps) + "\n")
        stream.flush()
    except BrokenPipeError:  # `mvmctl logs x | head`: the reader had enough
        raise SystemExit(0) from None


def _note(text: str) -> None:
    print(text, file=sys.stderr)
