"""The arguments of the commands in ``mvm/cli/ir_commands.py``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mvm.cli.parsers import SubParsers


def register(sub: SubParsers) -> None:
    emit = sub.add_parser("emit", help="run an SDK entry file and print its canonical Workload IR")
    emit.add_argument(
        "entry", type=Path, help="entry.py (@mvm.app) or entry.ts/.js (mvm-sdk's mvm.app)"
    )
    emit.add_argument("-o", "--out", type=Path, help="write here (default: $MVM_IR_OUT or stdout)")
    emit.set_defaults(handler="ir_commands:cmd_emit")

    validate = sub.add_parser(
        "validate", help="validate a Workload IR JSON file, or a project (mvm.toml + flake)"
    )
    validate.add_argument(
        "file", type=Path, nargs="?", help="IR.json | mvm.toml | PROJECT (default: this folder)"
    )
    validate.add_argument("--no-files", action="store_true", help="skip lockfile checks (IR only)")
    validate.set_defaults(handler="ir_commands:cmd_validate")

    audit = sub.add_parser("audit", help="the hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = audit_sub.add_parser("verify", help="check every entry of the audit chain")
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    verify.set_defaults(handler="ir_commands:cmd_audit_verify")
