"""Build-side verbs: doctor, kernel build, build."""

from __future__ import annotations

import argparse
import json
import sys

import attrs

from mvm.cli.builder_commands import build_project
from mvm.cli.images import resolve_image
from mvm.cli.progress import BuildProgress
from mvm.cli.project import find_target


async def cmd_doctor(args: argparse.Namespace) -> int:
    from mvm.engine.doctor import run_checks

    checks = run_checks()
    if args.json:
        print(json.dumps([attrs.asdict(c) for c in checks], indent=2))
    else:
        marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
        for c in checks:
            line = f"[{marks[c.status]}] {c.name:<18} {c.detail}"
            if c.fix and c.status != "ok":
                line += f"  -> fix: {c.fix}"
            print(line)
    failed = [c for c in checks if c.status == "fail" and c.required]
    return 1 if failed else 0


async def cmd_kernel_build(args: argparse.Namespace) -> int:
    from mvm.backends.kernel_build import ensure_kernel

    with BuildProgress() as progress:
        path = await ensure_kernel(progress=progress.update)
    print(path)
    return 0


async def cmd_build(args: argparse.Namespace) -> int:
    project = find_target(args.image, args.flake, args.profile)
    if project is not None:  # a flake project: Nix builders, else the offline fallback
        outcome = await build_project(
            project.job, args.builder, one_shot=args.no_persistent_builder
        )
        image = outcome.image
    else:
        if args.no_persistent_builder:
            print("builder: one-shot builder requested (--no-persistent-builder)", file=sys.stderr)
        image = await resolve_image(args.image or "demo")
    if args.json:
        print(json.dumps({"directory": str(image.directory), "meta": image.meta}, indent=2))
    else:
        print(image.directory)
    print(f"built {image.name}: {image.rootfs}", file=sys.stderr)
    return 0
