"""``mvmctl dev up/down/shell/status/cache inspect``: the dev image inner loop.

``dev up`` builds the project's dev output (``--profile``, else mvm.toml's profile when
it is not ``default``, else ``dev``) as an accessible image, boots it detached with
mvm.toml's ports, volumes and size, and drops into its shell when stdin is a terminal
(otherwise it says how to attach). With no project, or a project without a dev
output, it boots the default dev image (the built-in ``demo-dev``, a busybox shell).
The dev VM's name is remembered in ``$MVM_HOME/dev/vm.json`` so ``mvmctl console``
and ``dev shell``/``down`` find it without a name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import anyio
import attrs

from mvm.cli.builder_commands import build_project
from mvm.cli.project import Project, find_target
from mvm.engine.base.errors import AccessDenied, MvmError, NotFoundError
from mvm.engine.base.paths import mvm_home
from mvm.engine.images.image import Image
from mvm.engine.request.vmrequest import VmRequest, check_vm_name
from mvm.engine.store import StateStore
from mvm.engine.vm.detached import start_detached, stop_vm_record

DEFAULT_DEV_VM = "mvm-dev"


def _say(text: str) -> None:
    print(text, file=sys.stderr)


def _state_file() -> Path:
    return mvm_home() / "dev" / "vm.json"


def current_dev_vm() -> str | None:
    """The VM the last ``dev up`` started (None when there is none)."""
    try:
        data = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def _dev_name(project: Project | None) -> str:
    if project is None:
        return DEFAULT_DEV_VM
    base = project.source.name.lower()
    return "".join(c if c.isalnum() or c == "-" else "-" for c in base).strip("-")[:50] + "-dev"


def _dev_attr(args: argparse.Namespace, project: Project) -> str:
    if args.profile:
        return str(args.profile)
    if project.toml is not None and project.toml.profile != "default":
        return project.toml.profile
    return "dev"


async def _build_dev(args: argparse.Namespace, project: Project | None) -> Image:
    """The project's dev image, or the default dev image when there is none."""
    from mvm.cli.images import resolve_image
    from mvm.engine.builders.auto import choose_builder

    if project is None:
        _say("dev up: no project here (no mvm.toml or flake.nix): the default dev image")
        return await resolve_image("demo-dev")
    job = attrs.evolve(project.job, attr=_dev_attr(args, project))
    try:
        choice = await choose_builder(job, "offline") if args.builder == "auto" else None
    except MvmError as exc:
        if "has no packages." in exc.message and not args.profile:
            try:  # the project's own image, when it is an accessible one (dev = true)
                choice = await choose_builder(project.job, "offline")
            except MvmError:
                choice = None
            spec = choice.job.spec if choice else None
            if choice is None or spec is None or not (spec.dev or spec.shell):
                _say(f"dev up: {job.label} has no dev output: the default dev image")
                return await resolve_image("demo-dev")
            _say(f"dev up: no dev output; {project.job.label} is accessible: using it")
            job = choice.job
        else:
            choice = None
    if choice is not None and choice.job.spec is not None and not choice.job.spec.dev:
        _say("dev up: building the offline image with dev = true (accessible)")
        job = attrs.evolve(choice.job, spec=attrs.evolve(choice.job.spec, dev=True))
    return (await build_project(job, choice.mode if choice else args.builder)).image


async def cmd_dev_up(args: argparse.Namespace) -> int:
    if args.name:
        check_vm_name(args.name)
    project = find_target(args.project, profile=args.profile)
    image = await _build_dev(args, project)
    if image.sealed:
        raise AccessDenied(
            f"{image.name} is a sealed image; dev needs an accessible one",
            code="E_DEV_SEALED",
            hint="set entrypoint.shell (or dev = true) in the dev output's mkGuest",
        )
    toml = project.toml if project else None
    name = args.name or _dev_name(project)
    request = VmRequest(
        name=name,
        image_dir=str(image.directory),
        ports=toml.ports if toml else (),
        backend=toml.hypervisor if toml else "qemu",
        mode="detached",
        vcpus=toml.vcpus if toml else None,
        memory_mib=toml.memory_mib if toml else None,
        volumes=toml.volumes if toml else (),
    )
    info = await start_detached(request)
    from mvm.cli.vm_commands import write_mode

    write_mode(name, "detached", dev=True)
    _state_file().parent.mkdir(parents=True, exist_ok=True)
    _state_file().write_text(json.dumps({"name": name, "image": image.name}))
    _say(f"{name}: up in {info.get('boot_s') or 0:.2f}s (dev image {image.name})")
    if args.no_shell or not sys.stdin.isatty():
        _say(f"{name}: not a terminal, so no shell; attach with: mvmctl console {name}")
        return 0
    return await _console(name)


async def _console(name: str) -> int:
    from mvm.cli.agent_commands import cmd_console

    return await cmd_console(argparse.Namespace(name=name, shell=None))


def _named(args: argparse.Namespace) -> str:
    name = args.name or current_dev_vm()
    if name is None:
        project = find_target(args.project)
        name = _dev_name(project)
    return name


async def cmd_dev_down(args: argparse.Namespace) -> int:
    name = _named(args)
    async with StateStore.open() as store:
        rec = await store.get_vm(name)
        if rec is None:
            raise NotFoundError(f"no dev VM named {name!r}", code="E_VM_NOT_FOUND")
        await stop_vm_record(store, rec)
    if current_dev_vm() == name:
        _state_file().unlink(missing_ok=True)
    _say(f"{name}: down")
    return 0


async def cmd_dev_shell(args: argparse.Namespace) -> int:
    return await _console(_named(args))


# -- status / cache inspect ------------------------------------------------------------------


async def builder_cache(*, verify: bool = False) -> dict[str, Any]:
    """The builder-VM cache's sanitized summary: kind, arch, readiness and the seed's
    safe reason code; ``verify`` also compares its fingerprint with today's inputs
    (the Debian packages, kernel, agent and library it would be made of)."""
    from mvm.engine.builders.builder_vm import inspect
    from mvm.engine.builders.builder_vm.image import gather_inputs

    fingerprint = None
    if verify:
        with contextlib.suppress(MvmError):
            inputs = await gather_inputs()
            fingerprint = await anyio.to_thread.run_sync(inputs.fingerprint)
    state = await anyio.to_thread.run_sync(inspect, fingerprint)
    return state.summary()


def _dev_image_present() -> bool:
    """Whether the default dev image (demo-dev) is already built in the offline cache."""
    from mvm.engine.base.paths import cache_dir

    metas = [m for sub in ("images", "builds") for m in (cache_dir() / sub).glob("*/mvm-meta.json")]
    for meta in metas:
        try:
            if json.loads(meta.read_text()).get("name") == "demo-dev":
                return True
        except (OSError, ValueError):
            continue
    return False


async def _dev_vm() -> dict[str, Any]:
    name = current_dev_vm()
    if name is None:
        return {"name": None, "state": "none"}
    async with StateStore.open() as store:
        rec = await store.get_vm(name)
    return {"name": name, "state": rec.state if rec else "gone"}


async def cmd_dev_status(args: argparse.Namespace) -> int:
    vm, cache = await _dev_vm(), await builder_cache()
    if args.json:
        print(json.dumps({"dev_vm": vm, "builder_cache": cache}))
        return 0
    print(f"dev vm:        {vm['name'] or '-'} ({vm['state']})")
    print(
        f"builder cache: kind={cache['kind']} arch={cache['arch']} "
        f"ready={'yes' if cache['ready'] else 'no'} reason={cache['reason']}"
    )
    if not cache["ready"]:
        print("               the first build that needs Nix assembles it from Debian's packages")
    return 0


async def cmd_dev_cache_inspect(args: argparse.Namespace) -> int:
    cache = await builder_cache(verify=True)
    summary = {**cache, "dev_image": "present" if _dev_image_present() else "absent"}
    if args.json:
        print(json.dumps(summary, sort_keys=True))
        return 0
    for key in ("kind", "arch", "ready", "reason", "dev_image"):
        print(f"{key + ':':<11}{summary[key]}")
    return 0
