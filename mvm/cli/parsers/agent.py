"""The arguments of the commands in ``mvm/cli/agent_commands.py``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser("exec", help="run a command in a VM (accessible images only)")
    p.add_argument("name")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin through")
    p.set_defaults(handler="agent_commands:cmd_exec")

    p = sub.add_parser("console", help="interactive shell in a VM (accessible images only)")
    p.add_argument("name", nargs="?", help="VM (default: the dev VM `mvmctl dev up` started)")
    p.add_argument(
        "--shell", default=None, help="program to run instead of the image's console shell"
    )
    p.set_defaults(handler="agent_commands:cmd_console")

    p = sub.add_parser("forward", help="forward host ports to a running VM until Ctrl-C")
    p.add_argument("name")
    p.add_argument("-p", "--publish", action="append", required=True, metavar="[ADDR:]HOST:GUEST")
    p.set_defaults(handler="agent_commands:cmd_forward")

    p = sub.add_parser("health", help="health of a VM's services as its agent reports it")
    p.add_argument("name")
    p.add_argument("--json", action="store_true", help="the agent's report as JSON")
    p.set_defaults(handler="agent_commands:cmd_health")
