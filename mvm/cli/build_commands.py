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
from mvm.engine.builders import MODES


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("doctor", help="check prerequisites and say how to fix what is missing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("kernel", help="the microVM kernel")
    ksub = p.add_subparsers(dest="kernel_command", required=True)
    kb = ksub.add_parser("build", help="build (or reuse) the cached microVM kernel")
    kb.set_defaults(func=cmd_kernel_build)

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
    p.add_argument("--builder", choices=MODES, default="auto", help="for projects (flakes)")
    p.add_argument("--json", action="store_true", help="print the image metadata as JSON")
    p.set_defaults(func=cmd_build)


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
