"""mvmctl, the command line on top of the engine.

``main`` first makes Ctrl-C (and SIGTERM/SIGHUP) before the command runs a quiet exit
130: until ``mvm.cli.app`` has parsed the arguments, imported the command and entered
trio (whose signal receiver then turns a signal into the command's cancellation and
its teardown), nothing has been started, so there is nothing to tear down, and a
Python traceback from the middle of an import is all a user would otherwise see.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

__all__ = ["command_done", "main"]

_done = False


def main(argv: Sequence[str] | None = None) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is not signal.SIG_IGN:  # nohup and friends stay ignored
            signal.signal(sig, _interrupted_before_start)
    from mvm.cli.app import main as run

    run(argv)


def command_done() -> None:
    """The command has returned: from now on a terminating signal is ignored (trio puts
    this module's handler back when its own receiver closes)."""
    global _done
    _done = True


def _interrupted_before_start(signum: int, _frame: FrameType | None) -> None:
    if _done:
        return
    os.write(sys.stderr.fileno(), b"interrupted before the command started; nothing to undo\n")
    os._exit(130)
