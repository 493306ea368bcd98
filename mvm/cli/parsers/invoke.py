"""The arguments of the commands in ``mvm/cli/invoke_commands.py``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers

# = mvm.engine.invoke.DEFAULT_TIMEOUT, which imports the agent client; a unit test pins them equal.
DEFAULT_TIMEOUT = 60.0


def register(sub: SubParsers) -> None:
    p = sub.add_parser("invoke", help="call a running VM's function and print its result")
    p.add_argument("name")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--input", "-i", action="append", default=[], metavar="NAME=VALUE",
        help="a keyword argument (VALUE is JSON if it parses, else a string)",
    )  # fmt: skip
    src.add_argument(
        "--json", type=Path, metavar="FILE", help="[args, kwargs] as JSON ('-': stdin)"
    )
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per call")
    p.add_argument("--count", type=int, default=1, help="call N times (prints every result)")
    p.add_argument("--warm", type=int, default=0, metavar="K", help="use a pool of K warm wrappers")
    p.set_defaults(handler="invoke_commands:cmd_invoke")
