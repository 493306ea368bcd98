"""The arguments of the commands in ``mvm/cli/build_commands.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


# engine.builders.MODES, spelled here so that building the parser does not import the
# builders package (tests/unit/test_cli_imports.py checks that they agree)
BUILDER_MODES = ("auto", "vm", "host", "ssh", "vsock", "offline")


def register(sub: SubParsers) -> None:
    p = sub.add_parser("doctor", help="check prerequisites and say how to fix what is missing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler="build_commands:cmd_doctor")

    p = sub.add_parser("kernel", help="the microVM kernel")
    ksub = p.add_subparsers(dest="kernel_command", required=True)
    kb = ksub.add_parser("build", help="build (or reuse) the cached microVM kernel")
    kb.set_defaults(handler="build_commands:cmd_kernel_build")

    p = sub.add_parser("build", help="build an image and print its directory")
    p.add_argument(
        "image",
        nargs="?",
        default=None,
        help="demo | demo-dev | SPEC.json | IR.json | PROJECT | mvm.toml "
        "(default: the project in this folder, else demo)",
    )
    p.add_argument("--flake", metavar="REF", help="flake to build: PATH, . or path:PATH")
    p.add_argument("--profile", help="package packages.<system>.<profile> (default: mvm.toml's)")
    p.add_argument(
        "--no-persistent-builder",
        action="store_true",
        help="build in a one-shot builder instead of the persistent one",
    )
    p.add_argument("--builder", choices=BUILDER_MODES, default="auto", help="for projects (flakes)")
    p.add_argument("--json", action="store_true", help="print the image metadata as JSON")
    p.set_defaults(handler="build_commands:cmd_build")
