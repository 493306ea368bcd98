"""The arguments of the commands in ``mvm/cli/clone_commands.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser("snapshot", help="save a running VM as a snapshot (it keeps running)")
    p.add_argument("name", help="the VM")
    p.add_argument("--as", dest="snap", metavar="SNAP", help="snapshot name (default NAME-time)")
    p.set_defaults(handler="clone_commands:cmd_snapshot")

    p = sub.add_parser("clone", help="start detached clones of a snapshot, each its own identity")
    p.add_argument("snapshot")
    p.add_argument("--name", required=True, help="clone name (N-1..N-K with --count K)")
    p.add_argument("--count", type=int, default=1, metavar="K")
    p.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[ADDR:]HOST:GUEST",
        help="forward a host port to a guest port; clone i gets HOST + i - 1",
    )
    p.add_argument("--boot-timeout", type=float, default=90.0)
    p.set_defaults(handler="clone_commands:cmd_clone")

    p = sub.add_parser("snapshots", help="list snapshots (or remove some with --rm)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--rm", nargs="+", default=[], metavar="SNAP", help="delete these snapshots")
    p.set_defaults(handler="clone_commands:cmd_snapshots")
