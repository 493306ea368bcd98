"""The arguments of the docker-like lifecycle verbs in ``mvm/cli/verb_commands.py``:
stop/start/restart/rm/kill/inspect, the ``ps`` alias of ``ls``, and ``completion``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser("stop", help="stop VMs, keeping their record and logs (start boots again)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument(
        "-t",
        "--time",
        type=float,
        default=10.0,
        dest="grace",
        metavar="SECONDS",
        help="how long the guest may take to power off before it is killed",
    )
    p.set_defaults(handler="verb_commands:cmd_stop")

    p = sub.add_parser("start", help="boot stopped VMs again, detached, as they were recorded")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler="verb_commands:cmd_start")

    p = sub.add_parser("restart", help="stop then start VMs")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-t", "--time", type=float, default=10.0, dest="grace", metavar="SECONDS")
    p.set_defaults(handler="verb_commands:cmd_restart")

    p = sub.add_parser("rm", help="remove stopped VMs (their record and run dir)")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument("-f", "--force", action="store_true", help="stop a running VM first")
    p.set_defaults(handler="verb_commands:cmd_rm")

    p = sub.add_parser("kill", help="signal a VM's VMM (default SIGKILL): a hard stop")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.add_argument(
        "-s",
        "--signal",
        default="KILL",
        metavar="SIG",
        help="signal name or number (KILL, SIGTERM, 9, ...)",
    )
    p.set_defaults(handler="verb_commands:cmd_kill")

    p = sub.add_parser("inspect", help="one VM as JSON: its row, ports and recorded spec")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler="verb_commands:cmd_inspect")

    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh, fish)")
    p.add_argument("shell", choices=("bash", "zsh", "fish"))
    p.set_defaults(handler="verb_commands:cmd_completion")


def alias(sub: SubParsers, name: str, target: str, helptext: str) -> None:
    """``name`` parses exactly as ``target`` (same parser object, so same flags and
    handler whatever ``target`` grows), and is listed in ``--help``."""
    sub.add_parser(name, help=helptext)
    sub._name_parser_map[name] = sub._name_parser_map[target]


def register_aliases(sub: SubParsers) -> None:
    """After every group is registered: aliases of other groups' commands."""
    alias(sub, "ps", "ls", "alias of ls")
