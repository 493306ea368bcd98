"""mvmctl verbs for the Workload IR and the audit chain: emit, validate, audit verify."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import anyio

from mvm.emit import emit_ir, validate_file, write_ir
from mvm.engine.admission.audit import AuditLog
from mvm.engine.base.errors import IrError


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
    from mvm.cli.validate_project import is_project_ref, validate_project

    if is_project_ref(args.file):
        return await validate_project(args.file)
    path: Path = args.file
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
