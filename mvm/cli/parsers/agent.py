"""The arguments of the commands in ``mvm/cli/agent_commands.py``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mvm.cli.parsers.vm import add_env_flags

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "exec",
        help="run a command in a VM (accessible images only); exits with its status",
    )
    p.add_argument("-i", "--interactive", action="store_true", help="pass stdin through")
    p.add_argument("-t", "--tty", action="store_true", help="give the command a terminal (PTY)")
    p.add_argument("-w", "--workdir", metavar="DIR", help="working directory in the guest")
    p.add_argument(
        "-u",
        "--user",
        metavar="USER[:GROUP]",
        help="run as this guest user (name or uid; needs exec as root, i.e. a root entrypoint)",
    )
    add_env_flags(p, "the command")
    p.add_argument("name")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")
    p.set_defaults(handler="agent_commands:cmd_exec")

    p = sub.add_parser(
        "cp",
        help="copy files or folders between the host and a VM: cp SRC VM:DST | cp VM:SRC DST",
    )
    p.add_argument("src", metavar="SRC|VM:SRC")
    p.add_argument("dst", metavar="DST|VM:DST")
    p.set_defaults(handler="cp_commands:cmd_cp")

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
