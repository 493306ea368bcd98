"""Which project a command (or ``Engine.build``) means: ``--flake PATH``, a project dir
or ./.

The seeds' commands run from a project directory (``mvmctl build``, ``mvmctl run``,
``mvmctl up --flake .``): ./mvm.toml gives the flake, the profile (the package of
``packages.<system>.<profile>``) and the run defaults (vcpus, memory_mib, ports,
volumes, hypervisor), which flags override. A flake ref is a local path, ``.`` or
``path:...``; ``github:``/``git+`` refs need the network, which is refused here.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

from mvm.engine.base.errors import ConfigError
from mvm.engine.builders import BuildJob
from mvm.engine.builders.offline import SYSTEMS, host_system
from mvm.engine.request.mvmtoml import MvmToml, load_mvm_toml

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")


@attrs.frozen
class Project:
    source: Path  # the flake directory
    attr: str  # the package name under packages.<system>
    toml: MvmToml | None

    @property
    def job(self) -> BuildJob:
        return BuildJob(name=self.source.name, source=self.source, attr=self.attr)


def flake_dir(ref: str) -> Path:
    """``.`` / ``./dir`` / ``/abs`` / ``path:...`` -> the flake's directory."""
    text = ref[len("path:") :] if ref.startswith("path:") else ref
    if ref.startswith(("github:", "git+", "gitlab:", "sourcehut:", "http:", "https:", "tarball")):
        raise ConfigError(
            f"flake ref {ref!r} must be fetched over the network, which this host has none of",
            code="E_FLAKE_REF",
            hint="check the flake out locally and pass --flake PATH",
        )
    text = text.split("?", 1)[0].split("#", 1)[0]
    if not text:
        raise ConfigError(f"flake ref {ref!r} names no path", code="E_FLAKE_REF")
    path = Path(text).expanduser().resolve()
    if not (path / "flake.nix").is_file():
        raise ConfigError(
            f"flake {ref!r}: {path} has no flake.nix",
            code="E_BUILD_SOURCE",
            hint="run it in the folder holding flake.nix, or pass --flake PATH",
        )
    return path


def check_profile(profile: str) -> str:
    if not _NAME.match(profile):
        raise ConfigError(
            f"profile {profile!r} is not a flake package name",
            code="E_PROFILE",
            hint="a name like default or dev (packages.<system>.<profile>)",
        )
    return profile


def parse_attr(attr: str) -> str:
    """``packages.<system>.<name>`` / ``.#name`` / ``name`` -> name; a package for
    another system than this host's is refused (the image would not run here)."""
    text = attr.split("#", 1)[1] if "#" in attr else attr
    parts = text.split(".")
    if len(parts) == 3 and parts[0] == "packages":
        system, name = parts[1], parts[2]
        if system not in SYSTEMS:
            raise ConfigError(
                f"--attr {attr!r}: unknown system {system!r}",
                code="E_FLAKE_ATTR",
                hint=f"one of {', '.join(SYSTEMS)}",
            )
        if system != host_system():
            raise ConfigError(
                f"--attr {attr!r} is an image for {system}; this host is {host_system()} and "
                f"has no {system} builder (no builder VM or remote builder for {system})",
                code="E_FLAKE_SYSTEM",
                hint=f"use packages.{host_system()}.{name}",
            )
        return check_profile(name)
    if len(parts) == 1:
        return check_profile(parts[0])
    raise ConfigError(
        f"--attr {attr!r} is not packages.<system>.<name> or a package name",
        code="E_FLAKE_ATTR",
    )


def _toml_of(directory: Path) -> MvmToml | None:
    path = directory / "mvm.toml"
    return load_mvm_toml(path) if path.is_file() else None


def find_target(
    ref: str | None, flake: str | None = None, profile: str | None = None
) -> Project | None:
    """The project named by ``--flake`` / ``ref`` / the current directory, or None when
    ``ref`` names something else (a built-in image, a spec, an image dir)."""
    if profile is not None:
        check_profile(profile)
    if flake is not None:
        source = flake_dir(flake)
        toml = _toml_of(Path.cwd()) or _toml_of(source)
        return Project(source, profile or (toml.profile if toml else "default"), toml)
    candidate = Path(ref) if ref is not None else Path.cwd()
    toml_path = candidate if candidate.name == "mvm.toml" else candidate / "mvm.toml"
    if toml_path.is_file():
        toml = load_mvm_toml(toml_path)
        source = (toml_path.parent / toml.flake).resolve()
        if toml.flake.startswith("path:") or not source.exists():
            source = flake_dir(toml.flake)
        if not (source / "flake.nix").is_file():
            raise ConfigError(
                f"{toml_path}: flake {toml.flake} has no flake.nix", code="E_TOML_PATH"
            )
        return Project(source, profile or toml.profile, toml)
    if candidate.is_dir() and (candidate / "flake.nix").is_file():
        return Project(candidate.resolve(), profile or "default", None)
    if ref is None and profile is not None:
        raise ConfigError(
            f"--profile {profile} needs a project: {Path.cwd()} has no mvm.toml or flake.nix",
            code="E_BUILD_SOURCE",
        )
    return None
