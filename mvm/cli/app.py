"""mvmctl: argument parsing, dispatch and the one-line error contract.

Every command is an async function run under trio. An ``MvmError`` becomes
``error[CODE]: message (hint)`` on stderr and a non-zero exit; Ctrl-C cancels
the command's scope (which tears down what it started) and exits 130. SIGTERM and
SIGHUP (a closed terminal) count as Ctrl-C: the default action would kill the
process mid-boot and orphan the VMM it had just spawned.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from mvm.cli.parsers import (
    agent,
    bench,
    build,
    builder,
    clone,
    dev,
    invoke,
    ir,
    lifecycle,
    vm,
)
from mvm.engine.base.errors import MvmError, SettingsError, error_leaves
from mvm.engine.base.settings import Settings, current_settings, use_settings

Command = Callable[[argparse.Namespace], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mvmctl", description="mvm microVM manager")
    parser.add_argument("--log-json", action="store_true", help="JSON logs on stderr")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("MVM_LOG_LEVEL", "warning"),
        help="debug, info, warning (default), error",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Help lists commands in this order. Only parsers are built here: each command's
    # module (and the engine, backends, actors behind it) is imported when it runs.
    for group in (vm, build, ir, agent, lifecycle, clone, invoke, bench, dev, builder):
        group.register(sub)
    return parser


def handler(target: str) -> Command:
    """The command a parser names as ``"module:function"`` in ``mvm.cli``, imported now:
    a command's module, and what it needs, load only when that command runs."""
    module, _, name = target.partition(":")
    return cast(Command, getattr(importlib.import_module(f"mvm.cli.{module}"), name))


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)  # --help and usage errors exit here, before any import
    import trio

    from mvm.engine.base.log import configure_logging

    configure_logging(json=args.log_json, level=args.log_level)
    command = handler(args.handler)
    try:  # the edge: the one read of the environment (every bad variable: one line each)
        settings = Settings.from_env()
    except SettingsError as exc:
        print("\n".join(err.one_line() for err in exc.all_errors), file=sys.stderr)
        raise SystemExit(exc.exit_status) from None
    try:
        status = trio.run(_until_terminated, functools.partial(command, args), settings)
    except MvmError as exc:  # a validator's every problem: one coded line each
        print("\n".join(e.one_line() for e in getattr(exc, "all_errors", (exc,))), file=sys.stderr)
        raise SystemExit(exc.exit_status) from None
    except KeyboardInterrupt:
        print("interrupted; everything this command started was torn down", file=sys.stderr)
        raise SystemExit(130) from None
    except BaseExceptionGroup as group:
        leaves = error_leaves(group)
        if any(isinstance(e, KeyboardInterrupt) for e in leaves):
            print("interrupted; everything this command started was torn down", file=sys.stderr)
            raise SystemExit(130) from None
        exits = [e for e in leaves if isinstance(e, SystemExit)]
        if exits:
            raise exits[0] from None
        errors = [e for e in leaves if isinstance(e, MvmError)]
        if errors:
            first = errors[0]
            lines = (e.one_line() for e in getattr(first, "all_errors", (first,)))
            print("\n".join(lines), file=sys.stderr)
            raise SystemExit(first.exit_status) from None
        raise
    raise SystemExit(status)


async def _until_terminated(
    command: Callable[[], Awaitable[int]], settings: Settings | None = None
) -> int:
    """Run ``command``; SIGINT/SIGTERM/SIGHUP cancel it, then KeyboardInterrupt is raised.

    Ctrl-C is received here rather than left to trio's KeyboardInterrupt, which can land
    at any checkpoint, teardown code included: a Ctrl-C just after an attached VM was
    ready once interrupted the engine's unwind and left its QEMU running. A cancellation
    lets shielded teardown finish. Commands that want a gentler answer (``run`` once the
    VM is ready stops the guest cleanly) open their own receiver for these signals, which
    takes precedence."""
    status = 0
    import trio

    with (
        use_settings(settings or current_settings()),
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals,
    ):
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                async for _ in signals:
                    raise KeyboardInterrupt

            async def run() -> None:
                nonlocal status
                status = await command()
                nursery.cancel_scope.cancel()

            nursery.start_soon(on_signal)
            nursery.start_soon(run)
    return status
