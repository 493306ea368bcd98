"""The arguments of the commands in ``mvm/cli/builder_commands.py``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mvm.cli.parsers.build import BUILDER_MODES as MODES

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser("persistent-builder", help="a long-lived build pool serving builds")
    psub = p.add_subparsers(dest="builder_command", required=True)
    start = psub.add_parser("start", help="start the builder in the background")
    start.add_argument("--builder", choices=MODES, default="auto")
    start.add_argument("--size", type=int, default=4, help="parallel builds")
    start.add_argument("--workspace", default=".", help="the project folder builds run in")
    start.set_defaults(handler="builder_commands:cmd_start")
    psub.add_parser("status", help="is it running, with what").set_defaults(
        handler="builder_commands:cmd_status"
    )
    submit = psub.add_parser("submit", help="build a project (dir with mvm.toml or flake.nix)")
    submit.add_argument("project", nargs="?", default=None)
    submit.add_argument("--flake", help="flake ref: PATH or path:PATH (default: the workspace)")
    submit.add_argument(
        "--attr", help="packages.<system>.<name> or a package name (default: mvm.toml profile)"
    )
    submit.set_defaults(handler="builder_commands:cmd_submit")
    psub.add_parser("stop", help="stop the builder").set_defaults(
        handler="builder_commands:cmd_stop"
    )
    serve = psub.add_parser("serve", help=argparse.SUPPRESS)
    serve.add_argument("--builder", choices=MODES, default="auto")
    serve.add_argument("--size", type=int, default=4)
    serve.set_defaults(handler="builder_commands:cmd_serve")
