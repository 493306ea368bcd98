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
        p = sub.add_parser(
            verb, help=helptext, usage="%(prog)s [options] [IMAGE] [-- CMD [ARG...]]"
        )
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
            help="host folder as a guest volume under /mnt/ (e.g. ./config:/mnt/config): "
            "read-only is a copy taken at boot (host changes show at the next start); "
            "with SIZE_MB a read-write disk seeded once from the folder, kept across restarts",
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
            "(default: mvm.toml's, else the best available); stub: tests only, it ISOLATES "
            "NOTHING (the agent runs on the host, exec as the calling user)",
        )
        p.add_argument("--cpus", "--vcpus", dest="vcpus", type=int, metavar="N")
        p.add_argument("--memory", type=int, dest="memory_mib", metavar="MIB")
        p.add_argument("--boot-timeout", type=float, default=90.0)
        p.add_argument(
            "--ttl",
            metavar="DURATION",
            help="stop the VM this long after it is ready (30s, 10m, 2h, 1d, or seconds); "
            'its exit reason is "ttl expired"',
        )
        if verb == "run":
            p.add_argument(
                "--attached",
                action="store_true",
                help="tie the VM to this command: stream its output, Ctrl-C stops it, "
                "exit with the guest's status",
            )
            p.add_argument("-d", "--detach", action="store_true", help="(default) same as `up`")
            p.add_argument(
                "--rm", action="store_true", help="remove the VM's record when it ends (--attached)"
            )
        # IMAGE -- CMD [ARG...]: mvm.cli.app splits the words after `--` off into cmd
        # (argparse 3.11 mishandles a `--` among optional positionals).
        p.set_defaults(cmd=[])
        p.set_defaults(handler=f"vm_commands:cmd_{verb}")

    p = sub.add_parser("down", help="stop a VM and remove its state")
    p.add_argument("names", nargs="+")
    p.set_defaults(handler="vm_commands:cmd_down")

    p = sub.add_parser("ls", help="list VMs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler="ls_commands:cmd_ls", event_loop="asyncio")

    p = sub.add_parser("status", help="show one VM (with its start mode)")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler="ls_commands:cmd_status", event_loop="asyncio")

    p = sub.add_parser(
        "logs",
        help="print a VM's app output (entrypoint and services; --all: the raw console)",
        description="The app's output: a command entrypoint's stdout/stderr (without the "
        "kernel's and /init's lines), then each service's log as [service] line. "
        "Service logs live in the guest: only a running VM has them.",
    )
    p.add_argument("name")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the VM ends")
    p.add_argument("-n", "--tail", type=_count, metavar="N", help="only the last N lines")
    p.add_argument(
        "--since",
        metavar="DURATION|TIME",
        help="only lines from then on: 30s, 5m, 2h, 1d, 2026-01-02T03:04:05Z or Unix seconds "
        "(console times are estimated from the guest's uptime; service lines carry none, "
        "so only the ones that arrive with -f pass)",
    )
    p.add_argument(
        "-t", "--timestamps", action="store_true", help="prefix each line with its UTC time"
    )
    p.add_argument("--service", metavar="S", help="only service S's log")
    p.add_argument(
        "--all",
        "--console",
        dest="all",
        action="store_true",
        help="the raw serial console (kernel, /init, agent and app lines) instead of "
        "the entrypoint's output",
    )
    p.set_defaults(handler="logs_commands:cmd_logs")

    p = sub.add_parser("wait", help="block until a VM exits; print its exit status")
    p.add_argument("name")
    p.add_argument("--timeout", type=float)
    p.add_argument("--json", action="store_true", help='print {"name", "exit_code"} as JSON')
    p.set_defaults(handler="vm_commands:cmd_wait")


def _count(text: str) -> int:
    """``--tail N``: a whole number, 0 or more."""
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of lines")
    return int(text)
