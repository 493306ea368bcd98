"""The arguments of ``mvmctl events`` (mvm/cli/events_commands.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser(
        "events",
        help="follow the events of every VM (from the store: VMs of any process)",
        description="Print the engine events of every VM as they are stored, whichever "
        "process supervises the VM (a shim, an attached run, an embedding app); "
        "Ctrl-C ends it. Kinds: vm.starting, vm.ready, vm.stopped, vm.step.<name>, ... "
        "(mvm.EventKind).",
    )
    p.add_argument("name", nargs="?", help="only this VM's events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--since",
        help="first print the stored events since then: a duration (30s, 10m, 2h, 1d), "
        "seconds since the epoch or an ISO date",
    )
    p.add_argument(
        "--no-follow", dest="follow", action="store_false", help="print and exit, do not follow"
    )
    p.set_defaults(handler="events_commands:cmd_events")
