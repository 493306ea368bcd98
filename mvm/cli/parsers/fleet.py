"""The arguments of ``mvmctl fleet ...`` (mvm/cli/fleet_commands.py): the fleet on Ray."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


def _address(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--address",
        help="the Ray cluster: HOST:PORT or ray://HOST:PORT (default: RAY_ADDRESS, else "
        "the cluster `ray start` made on this host)",
    )


def register(sub: SubParsers) -> None:
    fleet = sub.add_parser(
        "fleet",
        help="VMs across the hosts of a Ray cluster (the fleet extra)",
        description="Run VMs on the mvm hosts of a Ray cluster: nodes started with "
        'ray start --resources=\'{"mvm_host": 1, "mvm_vcpus": N, "mvm_memory_mib": M}\' '
        "(and --labels='{\"mvm.home\": DIR}' for another MVM_HOME).",
    )
    verbs = fleet.add_subparsers(dest="fleet_command", metavar="FLEET_COMMAND", required=True)

    up = verbs.add_parser("up", help="place and start a VM on a node (detached)")
    up.add_argument("image", help="demo, demo-dev, a spec .json or an image directory")
    up.add_argument("--name", help="VM name, unique in the fleet (default: the image name)")
    up.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="HOST:GUEST",
        help="forward a port; it listens on the node's address",
    )
    up.add_argument("--vcpus", type=int)
    up.add_argument("--memory", type=int, dest="memory_mib", metavar="MIB")
    up.add_argument("--strategy", choices=("spread", "pack"), default="spread")
    up.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="the node must carry this Ray label",
    )
    up.add_argument("--restart", choices=("never", "on-node-loss"), default="never")
    up.add_argument("--backend", default="qemu")
    _address(up)
    up.set_defaults(handler="fleet_commands:cmd_up")

    ls = verbs.add_parser("ls", help="every VM of the fleet, with its node")
    ls.add_argument("--json", action="store_true")
    _address(ls)
    ls.set_defaults(handler="fleet_commands:cmd_ls")

    ex = verbs.add_parser("exec", help="run a command in a fleet VM")
    ex.add_argument("name")
    ex.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARG...]")
    _address(ex)
    ex.set_defaults(handler="fleet_commands:cmd_exec")

    logs = verbs.add_parser("logs", help="the console of a fleet VM")
    logs.add_argument("name")
    logs.add_argument("--tail", type=int, default=100)
    _address(logs)
    logs.set_defaults(handler="fleet_commands:cmd_logs")

    down = verbs.add_parser("down", help="stop a fleet VM and free its name")
    down.add_argument("name")
    _address(down)
    down.set_defaults(handler="fleet_commands:cmd_down")

    nodes = verbs.add_parser("nodes", help="the mvm hosts of the cluster")
    nodes.add_argument("--json", action="store_true")
    _address(nodes)
    nodes.set_defaults(handler="fleet_commands:cmd_nodes")
