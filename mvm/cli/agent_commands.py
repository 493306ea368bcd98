"""Verbs that talk to a running VM's guest agent: exec, console, forward, health."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import termios
import tty
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager

import anyio
import trio

from mvm.actors.port_forward import PortForward, bind_forward_listener
from mvm.backends.guest.client import AgentClient
from mvm.backends.guest.exec_user import exec_as
from mvm.backends.guest.streams import ExecSession
from mvm.engine.base.errors import AgentError, ConfigError, MvmError, NotFoundError
from mvm.engine.request.envvars import parse_env
from mvm.engine.request.vmrequest import PortMapping
from mvm.engine.runtime.supervisor import RestartPolicy, Supervisor
from mvm.engine.vm.agent_access import open_vm_agent, require_accessible, running_vm


def _argv(args: argparse.Namespace) -> list[str]:
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise ConfigError("no command given", code="E_EXEC_ARGV", hint="mvmctl exec NAME -- CMD")
    return argv


async def _pump_output(proc: ExecSession) -> None:
    async for fd, data in proc.output():
        stream = sys.stdout.buffer if fd == 1 else sys.stderr.buffer
        stream.write(data)
        stream.flush()


async def _pump_stdin(proc: ExecSession) -> None:
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        while data := await stdin.receive_some(65536):
            await proc.write(data)
    await proc.close_stdin()


def _status(proc: ExecSession) -> int:
    if proc.exit_signal:
        return 128 + proc.exit_signal
    return proc.exit_code if proc.exit_code is not None else 1


async def cmd_exec(args: argparse.Namespace) -> int:
    """docker exec's flags; the exit status is the command's (128+N for signal N)."""
    argv = _argv(args)
    env = parse_env(args.env, args.env_file, lookup=os.environ.get)
    require_accessible(await running_vm(args.name), "exec")
    tty = bool(args.tty)
    if tty:
        env.setdefault("TERM", os.environ.get("TERM", "xterm"))
    async with open_vm_agent(args.name) as client:
        if args.user:
            argv, env = await exec_as(client, args.user, argv, env)
        try:
            return await _exec_streams(client, args, argv, env, tty)
        except AgentError as exc:
            if exc.code != "E_EXEC":
                raise
            # The command could not start: a shell's statuses (127 not found, 126 not runnable).
            print(exc.one_line(), file=sys.stderr)
            return 127 if "No such file" in exc.message else 126


async def _exec_streams(
    client: AgentClient, args: argparse.Namespace, argv: list[str], env: dict[str, str], tty: bool
) -> int:
    size = shutil.get_terminal_size()
    async with client.open_exec(
        argv,
        env=env,
        cwd=args.workdir,
        stdin=args.interactive,
        pty=tty,
        rows=size.lines,
        cols=size.columns,
    ) as proc:
        with _raw_terminal() if tty and args.interactive else contextlib.nullcontext():
            async with anyio.create_task_group() as tg:
                if args.interactive:
                    tg.start_soon(_pump_stdin, proc)
                if tty:
                    tg.start_soon(_follow_window_size, proc)
                await _pump_output(proc)
                tg.cancel_scope.cancel()
    return _status(proc)


async def _follow_window_size(proc: ExecSession) -> None:
    """SIGWINCH here -> ``resize`` there, so full-screen programs redraw at the new size."""
    with trio.open_signal_receiver(signal.SIGWINCH) as signals:
        async for _ in signals:
            size = shutil.get_terminal_size()
            with contextlib.suppress(MvmError):
                await proc.resize(size.lines, size.columns)


@contextmanager
def _raw_terminal() -> Iterator[None]:
    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd, termios.TCSADRAIN)  # keep what was typed before the shell was up
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def cmd_console(args: argparse.Namespace) -> int:
    if args.name is None:
        args.name = _project_dev_vm()
    require_accessible(await running_vm(args.name), "console")
    size = shutil.get_terminal_size()
    async with open_vm_agent(args.name) as client:
        proc = await _console(client, getattr(args, "shell", None), size.lines, size.columns)
    print(f"\r\n[console of {args.name} closed]", file=sys.stderr)
    return _status(proc)


def _project_dev_vm() -> str:
    """No name: the dev VM ``dev up`` started (for this project, or the default one)."""
    from mvm.cli.dev_commands import current_dev_vm

    name = current_dev_vm()
    if name is None:
        raise NotFoundError(
            "no VM named and no dev VM running",
            code="E_CONSOLE_NO_VM",
            hint="mvmctl dev up, or mvmctl console VM",
        )
    return name


def _open_console(
    client: AgentClient, shell: str | None, rows: int, cols: int
) -> AbstractAsyncContextManager[ExecSession]:
    """The image's console shell (its shell entrypoint, as the entrypoint uid), or --shell."""
    env = {"TERM": os.environ.get("TERM", "xterm")}
    if shell is None:
        return client.open_console(rows=rows, cols=cols, env=env)
    return client.open_exec([shell, "-l"], env=env, pty=True, rows=rows, cols=cols)


async def _console(client: AgentClient, shell: str | None, rows: int, cols: int) -> ExecSession:
    async with _open_console(client, shell, rows, cols) as proc:
        with _raw_terminal():
            async with anyio.create_task_group() as tg:
                tg.start_soon(_pump_stdin, proc)
                tg.start_soon(_follow_window_size, proc)
                await _pump_output(proc)
                tg.cancel_scope.cancel()
    return proc


class _FixedAgent:
    def __init__(self, client: AgentClient) -> None:
        self._client = client

    async def client(self, timeout: float = 30.0) -> AgentClient:
        return self._client


async def cmd_forward(args: argparse.Namespace) -> int:
    mappings = [PortMapping.parse(p) for p in args.publish]
    await running_vm(args.name)
    listeners = [await bind_forward_listener(m) for m in mappings]
    async with open_vm_agent(args.name) as client, Supervisor(f"forward/{args.name}") as sup:
        for mapping, listener in zip(mappings, listeners, strict=True):
            await sup.start(
                PortForward(args.name, mapping, listener, _FixedAgent(client)),
                policy=RestartPolicy(kind="never"),
            )
        print(
            f"{args.name}: forwarding "
            + ", ".join(f"{m.host_addr}:{m.host_port} -> guest:{m.guest_port}" for m in mappings)
            + " (Ctrl-C to stop)",
            file=sys.stderr,
        )
        interrupted = await _until_closed_or_signal(client)
    if interrupted:
        print(f"{args.name}: forwarding stopped", file=sys.stderr)
        return 130
    print(f"{args.name}: the VM went away; forwarding stopped", file=sys.stderr)
    return 1


async def _until_closed_or_signal(client: AgentClient) -> bool:
    """Wait for Ctrl-C/SIGTERM (True) or the VM's agent link to close (False).

    Signals are received explicitly rather than as KeyboardInterrupt, which trio may
    raise inside whichever task happens to run (e.g. the agent reader)."""
    interrupted = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                nonlocal interrupted
                async for _ in signals:
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

            tg.start_soon(on_signal)
            await client.wait_closed()
            tg.cancel_scope.cancel()
    return interrupted


async def cmd_health(args: argparse.Namespace) -> int:
    async with open_vm_agent(args.name) as client:
        status = await client.health()
    worst = max(
        (
            {"healthy": 0, "unknown": 1}.get(str(i.get("status", "unknown")), 2)
            for i in status.values()
        ),
        default=0,
    )
    if getattr(args, "json", False):
        print(json.dumps({"name": args.name, "services": status}, indent=2, sort_keys=True))
        return 0 if worst == 0 else 1
    if not status:
        print(f"{args.name}: no health checks defined")
        return 0
    for service, info in sorted(status.items()):
        state = str(info.get("status", "unknown"))
        print(f"{service}\t{state}\tfailures={info.get('failures', 0)}\trc={info.get('rc')}")
    return 0 if worst == 0 else 1
