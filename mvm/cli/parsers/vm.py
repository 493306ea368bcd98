"""The arguments of the commands in ``mvm/cli/vm_commands.py``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


def add_env_flags(p: argparse.ArgumentParser, who: str) -> None:
    """-e/--env-file, as docker has them (engine/request/envvars.py parses both)."""
    p.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="KEY=VAL",
        help=f"set a variable for {who} (KEY alone: this shell's value; repeatable)",
    )
    p.add_argument(
        "--env-file",
        action="append",
        default=[],
        metavar="FILE",
        help="read KEY=VAL lines (# comments, quotes) from FILE (repeatable)",
    )


def register(sub: SubParsers) -> None:
    for verb, helptext in (
        ("run", "build (if needed) and boot, detached (--attached: tied to this terminal)"),
        ("up", "build (if needed) and boot, detached (survives this command)"),
    ):
        p = sub.add_parser(verb, help=helptext)
        p.add_argument(
            "image",
            nargs="?",
            default=None,
            help="PROJECT | mvm.toml | demo | demo-dev | SPEC.json | IR.json | IMAGE_DIR "
            "(default: the project in this folder, else demo)",
        )
        p.add_argument("--flake", metavar="REF", help="build and boot this flake (PATH, path:)")
        p.add_argument("--profile", help="flake package (default: mvm.toml's profile)")
        p.add_argument("--name", help="VM name (default: the image name)")
        p.add_argument(
            "-p",
            "--publish",
            action="append",
            default=[],
            metavar="[ADDR:]HOST:GUEST",
            help="forward a host TCP port to a guest port (repeatable)",
        )
        p.add_argument(
            "-v",
            "--volume",
            action="append",
            default=[],
            metavar="HOST:GUEST[:SIZE_MB]",
            help="host folder as a guest volume: read-only, or read-write persistent with SIZE_MB",
        )
        add_env_flags(p, "the guest's services, entrypoint and exec")
        p.add_argument(
            "--health-action",
            choices=("none", "restart-service", "restart-vm"),
            default="none",
            help="what to do when a service's health check turns unhealthy",
        )
        p.add_argument(
            "--net",
            choices=("none", "tap"),
            default="none",
            help="tap: a real NIC on bridge br-mvm with NAT (root); default: ports via the agent",
        )
        p.add_argument(
            "--hypervisor",
            "--backend",
            dest="backend",
            default=None,
            help="firecracker | qemu | cloud-hypervisor | apple-container | libkrun | auto "
            "(default: mvm.toml's, else the best available)",
        )
        p.add_argument("--cpus", "--vcpus", dest="vcpus", type=int, metavar="N")
        p.add_argument("--memory", type=int, dest="memory_mib", metavar="MIB")
        p.add_argument("--boot-timeout", type=float, default=90.0)
        if verb == "run":
            p.add_argument(
                "--attached",
                action="store_true",
                help="tie the VM to this command: stream its output, Ctrl-C stops it, "
                "exit with the guest's status",
            )
            p.add_argument("-d", "--detach", action="store_true", help="(default) same as `up`")
        p.set_defaults(handler=f"vm_commands:cmd_{verb}")

    p = sub.add_parser("down", help="stop a VM and remove its state")
    p.add_argument("names", nargs="+")
    p.set_defaults(handler="vm_commands:cmd_down")

    p = sub.add_parser("ls", help="list VMs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler="ls_commands:cmd_ls")

    p = sub.add_parser("status", help="show one VM (with its start mode)")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler="ls_commands:cmd_status")

    p = sub.add_parser("logs", help="print a VM's serial console log")
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true")
    p.set_defaults(handler="vm_commands:cmd_logs")

    p = sub.add_parser("wait", help="block until a VM exits; print its exit status")
    p.add_argument("name")
    p.add_argument("--timeout", type=float)
    p.set_defaults(handler="vm_commands:cmd_wait")
