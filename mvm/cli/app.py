"""mvmctl: argument parsing, dispatch and the one-line error contract.

Every command is an async function run under anyio (trio; asyncio for ls/status).
An ``MvmError`` becomes ``error[CODE]: message (hint)`` on stderr and a non-zero exit;
Ctrl-C cancels the command's scope (which tears down what it started) and exits 130.
SIGTERM and SIGHUP (a closed terminal) count as Ctrl-C: the default action would kill
the process mid-boot and orphan the VMM it had just spawned.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn, cast

from mvm.cli.parsers import (
    agent,
    bench,
    build,
    builder,
    clone,
    dev,
    events,
    fleet,
    images,
    invoke,
    ir,
    lifecycle,
    verbs,
    vm,
)
from mvm.engine.base.errors import MvmError, SettingsError, error_leaves
from mvm.engine.base.settings import Settings, current_settings, use_settings

Command = Callable[[argparse.Namespace], Awaitable[int]]


def build_parser() -> argparse.ArgumentParser:
    from mvm.engine.base.env_docs import help_text  # the Settings fields' own docs

    parser = argparse.ArgumentParser(
        prog="mvmctl",
        description="mvm microVM manager",
        epilog=help_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action=_VersionAction, help="print the mvm-engine version and exit"
    )
    parser.add_argument("--log-json", action="store_true", help="JSON logs on stderr")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("MVM_LOG_LEVEL", "warning"),
        help="debug, info, warning (default), error",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Help lists commands in this order. Only parsers are built here: each command's
    # module (and the engine, backends, actors behind it) is imported when it runs.
    groups = (
        vm,
        verbs,
        build,
        images,
        ir,
        agent,
        lifecycle,
        events,
        clone,
        invoke,
        bench,
        dev,
        builder,
        fleet,
    )
    for group in groups:
        group.register(sub)
    verbs.register_aliases(sub)
    return parser


class _VersionAction(argparse.Action):
    """``--version``: the installed distribution's version, looked up only when asked
    (importlib.metadata would slow every ``--help``)."""

    def __init__(self, option_strings: Sequence[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"mvmctl {distribution_version()}")
        parser.exit()


def distribution_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mvm-engine")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (mvm-engine is not installed)"


_TAKES_COMMAND = ("run", "up")  # IMAGE -- CMD [ARG...]


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parse_args, with ``run|up ... -- CMD ARGS``: the words after the first ``--``
    are the guest command, whatever they look like (flags of ours included).
    --help and usage errors exit here, before any import."""
    if "--" in argv and _command_word(argv) in _TAKES_COMMAND:
        cut = argv.index("--")
        args = parser.parse_args(argv[:cut])
        args.cmd = argv[cut + 1 :]
        return args
    return parser.parse_args(argv)


def _command_word(argv: list[str]) -> str | None:
    """The subcommand: the first word that is not a global option (or its value)."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
        elif word == "--":
            return None
    return None


def handler(target: str) -> Command:
    """The command a parser names as ``"module:function"`` in ``mvm.cli``, imported now:
    a command's module, and what it needs, load only when that command runs."""
    module, _, name = target.partition(":")
    return cast(Command, getattr(importlib.import_module(f"mvm.cli.{module}"), name))


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    # --help and usage errors exit here, before any import
    args = parse(parser, list(sys.argv[1:] if argv is None else argv))
    from mvm.engine.base.log import configure_logging

    configure_logging(json=args.log_json, level=args.log_level)
    command = handler(args.handler)
    try:  # the edge: the one read of the environment (every bad variable: one line each)
        settings = Settings.from_env()
    except SettingsError as exc:
        print("\n".join(err.one_line() for err in exc.all_errors), file=sys.stderr)
        raise SystemExit(exc.exit_status) from None
    try:
        import anyio

        # Read-only commands (ls, status) run on asyncio, which the logging stack imports
        # anyway: importing trio was a third of ls's start-up. The engine is anyio code.
        status = anyio.run(
            _until_terminated,
            functools.partial(command, args),
            settings,
            backend=getattr(args, "event_loop", "trio"),
        )
        ignore_terminating_signals()  # what it did is done: exit with its status
    except MvmError as exc:  # a validator's every problem: one coded line each
        print("\n".join(e.one_line() for e in getattr(exc, "all_errors", (exc,))), file=sys.stderr)
        raise SystemExit(exc.exit_status) from None
    except KeyboardInterrupt:
        print("interrupted; everything this command started was torn down", file=sys.stderr)
        raise SystemExit(130) from None
    except BrokenPipeError:
        _reader_went_away()
    except BaseExceptionGroup as group:
        leaves = error_leaves(group)
        if any(isinstance(e, BrokenPipeError) for e in leaves):
            _reader_went_away()
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


def _reader_went_away() -> NoReturn:
    """``mvmctl inspect x | head``: the reader closed the pipe, which is how such a pipeline
    ends, not an error. Exit as a process killed by SIGPIPE would (141), with stdout
    pointed at /dev/null so the interpreter's final flush cannot fail a second time."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(128 + signal.SIGPIPE) from None


def ignore_terminating_signals() -> None:
    """Once the command has returned, a Ctrl-C must not turn its outcome into a Python
    exit by SIGINT (``up`` printed "up in 1.7s" and the VM runs: the exit status is 0)."""
    from mvm.cli import command_done

    command_done()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not None:  # None: a handler not set from Python
            signal.signal(sig, signal.SIG_IGN)


async def _until_terminated(
    command: Callable[[], Awaitable[int]], settings: Settings | None = None
) -> int:
    """Run ``command``; SIGINT/SIGTERM/SIGHUP cancel it, then KeyboardInterrupt is raised.

    Ctrl-C is received here rather than left to trio's KeyboardInterrupt, which can land
    at any checkpoint, teardown code included: a Ctrl-C just after an attached VM was
    ready once interrupted the engine's unwind and left its QEMU running. A cancellation
    lets shielded teardown finish. Commands that want a gentler answer (``run`` once the
    VM is ready stops the guest cleanly) open their own receiver for these signals, which
    takes precedence (under trio, where those commands run)."""
    import anyio

    status, finished = 0, False
    with (
        use_settings(settings or current_settings()),
        anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals,
    ):
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                async for _ in signals:
                    if finished:
                        return  # the command is done: nothing is left to interrupt
                    raise KeyboardInterrupt

            async def run() -> None:
                nonlocal status, finished
                status = await command()
                finished = True
                ignore_terminating_signals()
                tg.cancel_scope.cancel()

            tg.start_soon(on_signal)
            tg.start_soon(run)
    return status
