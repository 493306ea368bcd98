"""``mvmctl dev up/down/shell``: the inner loop on a project (mvm.toml + flake.nix).

``dev up`` builds the project (a cache hit when nothing changed) as an accessible
image and boots it detached with mvm.toml's ports, volumes, size and hypervisor;
``dev shell`` is ``mvmctl console`` on it; ``dev down`` stops it. A Nix build must
produce an accessible image (``dev = true`` in mkGuest, e.g. a ``dev`` profile); the
offline fallback simply builds the same spec with ``dev = true``.
"""

from __future__ import annotations

import argparse
import sys

import attrs

from mvm.cli.builder_commands import build_project, find_project
from mvm.engine.builders import MODES, BuildJob
from mvm.engine.detached import start_detached, stop_vm_record
from mvm.engine.errors import AccessDenied, ConfigError, NotFoundError
from mvm.engine.store import StateStore
from mvm.engine.vmrequest import VmRequest


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dev", help="build and boot a project's dev image; shell into it")
    dsub = p.add_subparsers(dest="dev_command", required=True)
    up = dsub.add_parser("up", help="build (if needed) and boot the dev image, detached")
    up.add_argument("project", nargs="?", default=".")
    up.add_argument("--name", help="VM name (default: <image>-dev)")
    up.add_argument("--profile", help="flake package (default: mvm.toml's profile)")
    up.add_argument("--builder", choices=MODES, default="auto")
    up.set_defaults(func=cmd_dev_up)
    for verb, text in (("down", "stop the dev VM"), ("shell", "console in the dev VM")):
        d = dsub.add_parser(verb, help=text)
        d.add_argument("project", nargs="?", default=".")
        d.add_argument("--name", help="VM name (default: <image>-dev)")
        d.set_defaults(func=cmd_dev_down if verb == "down" else cmd_dev_shell)


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _project(ref: str) -> tuple[BuildJob, object]:
    project = find_project(ref)
    if project is None:
        raise ConfigError(
            f"{ref} is not a project (no mvm.toml or flake.nix)",
            code="E_DEV_PROJECT",
            hint="run it in the folder holding mvm.toml",
        )
    source, attr, toml = project
    return BuildJob(name=source.name, source=source, attr=attr), toml


def _default_name(ref: str) -> str:
    project = find_project(ref)
    base = project[0].name if project else "project"
    return "".join(c if c.isalnum() or c == "-" else "-" for c in base.lower()) + "-dev"


async def cmd_dev_up(args: argparse.Namespace) -> int:
    job, toml = _project(args.project)
    if args.profile:
        job = attrs.evolve(job, attr=args.profile)
    from mvm.engine.builders.auto import choose_builder

    choice = await choose_builder(job, args.builder)
    if choice.job.spec is not None and not choice.job.spec.dev:
        _say("dev up: building the offline image with dev = true (accessible)")
        job = attrs.evolve(choice.job, spec=attrs.evolve(choice.job.spec, dev=True))
    outcome = await build_project(job, choice.mode)
    image = outcome.image
    if image.sealed:
        raise AccessDenied(
            f"{job.label} builds a sealed image; dev needs an accessible one",
            code="E_DEV_SEALED",
            hint="set dev = true in mkGuest (e.g. a `dev` package) and pass --profile dev",
        )
    name = args.name or _default_name(args.project)
    request = VmRequest(
        name=name,
        image_dir=str(image.directory),
        ports=getattr(toml, "ports", ()),
        backend=getattr(toml, "hypervisor", "qemu"),
        mode="detached",
        vcpus=getattr(toml, "vcpus", None),
        memory_mib=getattr(toml, "memory_mib", None),
        volumes=getattr(toml, "volumes", ()),
    )
    info = await start_detached(request)
    _say(f"{name}: up in {info.get('boot_s') or 0:.2f}s; mvmctl dev shell --name {name}")
    return 0


async def cmd_dev_down(args: argparse.Namespace) -> int:
    name = args.name or _default_name(args.project)
    async with StateStore.open() as store:
        rec = await store.get_vm(name)
        if rec is None:
            raise NotFoundError(f"no dev VM named {name!r}", code="E_VM_NOT_FOUND")
        await stop_vm_record(store, rec)
    _say(f"{name}: down")
    return 0


async def cmd_dev_shell(args: argparse.Namespace) -> int:
    from mvm.cli.agent_commands import cmd_console

    name = args.name or _default_name(args.project)
    return await cmd_console(argparse.Namespace(name=name, shell="/bin/sh"))
