"""The arguments of the commands in ``mvm/cli/dev_commands.py``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mvm.cli.parsers.build import BUILDER_MODES as MODES

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


def register(sub: SubParsers) -> None:
    p = sub.add_parser("dev", help="build and boot a project's dev image; shell into it")
    dsub = p.add_subparsers(dest="dev_command", required=True)
    up = dsub.add_parser("up", help="build (if needed) and boot the dev image, then its shell")
    up.add_argument("project", nargs="?", default=".")
    up.add_argument("--name", help="VM name (default: <project>-dev, or mvm-dev)")
    up.add_argument("--profile", help="flake package (default: dev)")
    up.add_argument("--builder", choices=MODES, default="auto")
    up.add_argument("--no-shell", action="store_true", help="boot only; do not attach")
    up.set_defaults(handler="dev_commands:cmd_dev_up")
    for verb, text in (("down", "stop the dev VM"), ("shell", "console in the dev VM")):
        d = dsub.add_parser(verb, help=text)
        d.add_argument("project", nargs="?", default=".")
        d.add_argument("--name", help="VM name (default: the one dev up started)")
        d.set_defaults(handler=f"dev_commands:cmd_dev_{verb}")
    st = dsub.add_parser("status", help="the dev VM and the builder cache")
    st.add_argument("--json", action="store_true")
    st.set_defaults(handler="dev_commands:cmd_dev_status")
    cache = dsub.add_parser("cache", help="the builder cache")
    csub = cache.add_subparsers(dest="cache_command", required=True)
    ins = csub.add_parser("inspect", help="sanitized builder-cache summary + dev-image presence")
    ins.add_argument("--json", action="store_true", help="labels only: no paths, no digests")
    ins.set_defaults(handler="dev_commands:cmd_dev_cache_inspect")
