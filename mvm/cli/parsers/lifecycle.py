"""The arguments of the commands in ``mvm/cli/lifecycle_commands.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser("detach", help="let an attached VM (mvmctl run) keep running detached")
    p.add_argument("name")
    p.set_defaults(handler="lifecycle_commands:cmd_detach")

    p = sub.add_parser(
        "cleanup", help="remove exited VMs, stale run directories and leaked network leases"
    )
    p.set_defaults(handler="lifecycle_commands:cmd_cleanup")
