"""What ``Engine.build`` accepts, resolved to a built Image: an ImageSpec, a spec or
Workload IR ``.json`` file, a built image directory, or a project (a flake dir, a dir
with ``mvm.toml``, the ``mvm.toml`` itself).

The CLI's ``run``/``build`` resolve their IMAGE argument with the same functions
(mvm/cli/images.py, mvm/cli/builder_commands.py), so a script and a command line that
name the same thing build the same image. Specs and IR go to the offline builder
(cached); a project goes through builder selection (host Nix, SSH, builder VM, else
the offline assembler) and the build cache.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from mvm.engine.base.errors import ConfigError, MvmError
from mvm.engine.base.log import get_logger
from mvm.engine.builders import BuildJob, ModeChoice
from mvm.engine.images.image import Image
from mvm.engine.images.imagespec import ImageSpec

if TYPE_CHECKING:
    from mvm.actors.builder_vm import BuildOutcome

log = get_logger("mvm.build")

BuildTarget: TypeAlias = "ImageSpec | str | os.PathLike[str]"  # what Engine.build takes
ProgressFn = Callable[[str, float | None], None]
Say = Callable[[str], None]


def is_workload_ir(path: Path) -> bool:
    """IR documents carry ``schema_version``; ImageSpec files never do. Unreadable or
    non-JSON files go down the spec path, whose errors name the problem."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "schema_version" in data


async def spec_of_file(path: Path) -> ImageSpec:
    """The ImageSpec a ``.json`` file means: Workload IR (lowered) or an image spec."""
    from mvm.engine.images.ir_image import load_ir_spec
    from mvm.engine.images.specfile import load_spec

    return await load_ir_spec(path) if is_workload_ir(path) else load_spec(path)


def _log_say(text: str) -> None:
    log.info("build.say", message=text)


def is_offline_failure(message: str) -> bool:
    """Host Nix failures the offline assembler can route around: inputs that need the
    network, or a flake whose ``path:`` inputs point outside its store copy."""
    return any(
        m in message
        for m in (
            "unable to download",
            "Couldn't resolve host",
            "could not resolve",
            "network",
            "points outside of its parent's store path",
        )
    )


async def build_job(
    job: BuildJob,
    mode: ModeChoice = "auto",
    *,
    say: Say = _log_say,
    on_log: Callable[[str], None] | None = None,
    persistent: bool = True,
) -> BuildOutcome:
    """Build a project job with the builder ``mode`` picks (``persistent``: a builder VM
    is the long-lived ``mvm-builder``, else a one-shot VM); ``auto`` falls back to the
    offline assembler when host Nix cannot fetch the flake's inputs."""
    from mvm.actors.builder_vm import builder_pool
    from mvm.engine.builder_session import BuilderVmProvider
    from mvm.engine.builders.auto import choose_builder

    choice = await choose_builder(job, mode, persistent=persistent, vm=BuilderVmProvider())
    for line in choice.explanation.splitlines():
        say(line)
    if choice.fell_back:
        say(f"no Nix builder available: building {job.label} with the offline builder")
    log_line = on_log or (lambda line: say(f"| {line}"))
    try:
        async with builder_pool(choice.builder, size=1) as pool:
            outcome = await pool.build(choice.job, on_log=log_line)
    except MvmError as exc:
        if mode != "auto" or choice.mode != "host" or not is_offline_failure(exc.message):
            raise
        say(f"host Nix failed ({exc.code}): using the offline builder")
        choice = await choose_builder(job, "offline")
        async with builder_pool(choice.builder, size=1) as pool:
            outcome = await pool.build(choice.job, on_log=log_line)
    return outcome


async def build_target(
    target: BuildTarget,
    progress: ProgressFn | None = None,
    *,
    profile: str | None = None,
) -> Image:
    """``Engine.build``'s dispatch (see the module doc); a path that is none of these is
    refused with E_IMAGE_REF."""
    from mvm.engine.builders.offline_image import build_offline_image

    if isinstance(target, ImageSpec):
        return await build_offline_image(target, progress=progress)
    path = Path(target)
    if path.is_dir() and (path / "mvm-meta.json").is_file():
        return Image.load(path)
    if path.suffix == ".json" and path.name != "mvm-meta.json":
        return await build_offline_image(await spec_of_file(path), progress=progress)
    from mvm.engine.builders.project import find_target

    project = find_target(str(path), profile=profile) if path.exists() else None
    if project is not None:
        return (await build_job(project.job)).image
    raise ConfigError(
        f"cannot build {str(target)!r}: not an ImageSpec, a spec or IR .json file, a built "
        "image directory, nor a project (flake.nix / mvm.toml)",
        code="E_IMAGE_REF",
    )
