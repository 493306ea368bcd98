"""mvmctl verbs for the Workload IR and the audit chain: emit, validate, audit verify."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anyio

from mvm.emit import emit_ir, validate_file, write_ir
from mvm.engine.audit import AuditLog
from mvm.engine.errors import IrError
from mvm.engine.mvmtoml import load_mvm_toml


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    emit = sub.add_parser("emit", help="run an SDK entry file and print its canonical Workload IR")
    emit.add_argument(
        "entry", type=Path, help="entry.py (@mvm.app) or entry.ts/.js (mvm-sdk's mvm.app)"
    )
    emit.add_argument("-o", "--out", type=Path, help="write here (default: $MVM_IR_OUT or stdout)")
    emit.set_defaults(func=cmd_emit)

    validate = sub.add_parser("validate", help="validate a Workload IR JSON file or mvm.toml")
    validate.add_argument("file", type=Path)
    validate.add_argument("--no-files", action="store_true", help="skip lockfile checks (IR only)")
    validate.set_defaults(func=cmd_validate)

    audit = sub.add_parser("audit", help="the hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    verify = audit_sub.add_parser("verify", help="check every entry of the audit chain")
    verify.add_argument("--json", action="store_true", help="machine-readable report")
    verify.set_defaults(func=cmd_audit_verify)


def _print_all(err: IrError) -> int:
    """Every problem of an invalid IR, one coded line each (the CLI prints only one)."""
    for problem in err.all_errors:
        print(problem.one_line(), file=sys.stderr)
    return 2


async def cmd_emit(args: argparse.Namespace) -> int:
    try:
        text = await anyio.to_thread.run_sync(lambda: emit_ir(args.entry))
    except IrError as err:
        return _print_all(err)
    written = write_ir(text, args.out)
    if written is not None:
        print(f"wrote {written}", file=sys.stderr)
    return 0


async def cmd_validate(args: argparse.Namespace) -> int:
    path: Path = args.file
    if path.name == "mvm.toml" or path.suffix == ".toml":
        return await _validate_toml(path)
    try:
        result = await anyio.to_thread.run_sync(
            lambda: validate_file(path, check_files=not args.no_files)
        )
    except IrError as err:
        return _print_all(err)
    for line in result.warnings:
        print(f"warning: {line}", file=sys.stderr)
    apps = ", ".join(app.name for app in result.workload.apps)
    print(f"ok: {path} (ir_hash {result.ir_hash}; apps: {apps})")
    return 0


async def _validate_toml(path: Path) -> int:
    config = load_mvm_toml(path)
    print(f"ok: {path} ({config})")
    return 0


async def cmd_audit_verify(args: argparse.Namespace) -> int:
    report = await AuditLog().verify_async()
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "entries": report.entries,
                    "first_bad_seq": report.first_bad_seq,
                    "reason": report.reason,
                }
            )
        )
    if report.ok:
        if not args.json:
            print(f"ok: audit chain intact ({report.entries} entries)")
        return 0
    report.raise_if_bad()
    return 1
