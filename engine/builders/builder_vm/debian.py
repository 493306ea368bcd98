"""The builder VM's software, taken from this machine's installed Debian packages.

The builder image is assembled offline (this host reaches no Nix binary cache), so its
``nix``, C toolchain and the offline package set's programs are Debian's own builds,
copied file by file from what ``dpkg`` says each installed package owns, with the
dependency closure of every root package. Debian 12 lists some files under ``/bin`` and
``/lib`` that live in ``/usr`` (merged-usr): they are placed at their ``/usr`` path, and
the guest gets ``/lib -> usr/lib`` links so the ELF interpreter path still resolves.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path

import attrs

from mvm.engine.base.errors import BuildPhaseError
from mvm.engine.builders.offline_pkgs import EXCLUDED_DIRS

# What every builder VM has: Nix, a shell and tools for the rootfs derivation (busybox,
# e2fsprogs), a C toolchain for the guest agent (gcc + musl for a static binary),
# patchelf and ldd for the offline package set's library closures.
BUILDER_ROOTS = (
    "nix-bin", "bash", "coreutils", "busybox-static", "e2fsprogs", "gcc", "musl-tools",
    "patchelf", "libc-bin", "findutils", "tar", "gzip", "xz-utils", "diffutils", "file",
)  # fmt: skip
_MERGED = (("/bin/", "/usr/bin/"), ("/sbin/", "/usr/sbin/"), ("/lib64/", "/usr/lib64/"),
           ("/lib/", "/usr/lib/"))  # fmt: skip
SETUP_HINT = "run ./scripts/setup (it installs the builder VM's Debian packages)"


@attrs.frozen
class DebianClosure:
    """The installed packages a builder needs (name -> version) and the files they own."""

    versions: dict[str, str]
    files: tuple[str, ...]  # absolute host paths: regular files and symlinks

    @property
    def fingerprint_lines(self) -> list[str]:
        return [f"{name}={version}" for name, version in sorted(self.versions.items())]


def guest_path(host_path: str) -> str:
    """Where a dpkg-listed file goes in the guest: merged-usr paths under ``/usr``."""
    for old, new in _MERGED:
        if host_path.startswith(old):
            return new + host_path[len(old) :]
    return host_path


@attrs.frozen
class _Installed:
    version: str
    depends: str  # Depends and Pre-Depends, as dpkg writes them


def _installed() -> tuple[dict[str, _Installed], dict[str, str]]:
    """Every installed package, and virtual package -> an installed provider (``awk`` ->
    ``mawk``), from one ``dpkg-query`` run: the closure is then resolved in memory."""
    result = subprocess.run(
        ["dpkg-query", "-W",
         "-f=${Package}\\t${db:Status-Abbrev}\\t${Version}\\t${Depends},${Pre-Depends}"
         "\\t${Provides}\\n"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    packages: dict[str, _Installed] = {}
    provides: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, status, version, depends, provided = [*line.split("\t", 4), "", "", "", ""][:5]
        if not status.startswith("ii"):
            continue
        name = name.split(":")[0]
        packages[name] = _Installed(version, depends)
        for item in provided.split(","):
            virtual = item.strip().split(" ")[0]
            if virtual:
                provides.setdefault(virtual, name)
    return packages, provides


def _alternatives(depends: str) -> list[list[str]]:
    out: list[list[str]] = []
    for group in depends.split(","):
        names = [alt.strip().split(" ")[0].split(":")[0] for alt in group.split("|")]
        names = [n for n in names if n]
        if names:
            out.append(names)
    return out


def closure(roots: Iterable[str]) -> DebianClosure:
    """Every installed package ``roots`` need (Depends + Pre-Depends, transitively), with
    their files. A root or a dependency that is not installed is a builder-bootstrap
    error naming all of them, so one run of setup fixes it."""
    installed, providers = _installed()
    versions: dict[str, str] = {}
    missing: set[str] = set()
    todo = list(dict.fromkeys(roots))
    while todo:
        name = todo.pop()
        if name in versions:
            continue
        if name not in installed:
            missing.add(name)
            continue
        versions[name] = installed[name].version
        for group in _alternatives(installed[name].depends):
            choice = next((n for n in group if n in installed), None)
            if choice is None:
                choice = next((providers[n] for n in group if n in providers), None)
            if choice is None:
                missing.add(group[0])
            elif choice not in versions:
                todo.append(choice)
    missing -= set(versions)
    if missing:
        raise BuildPhaseError(
            "builder bootstrap",
            f"the builder VM needs Debian packages that are not installed: "
            f"{', '.join(sorted(missing))}",
            code="E_BUILDER_PACKAGES",
            hint=SETUP_HINT,
        )
    return DebianClosure(versions=versions, files=tuple(_files(sorted(versions))))


def _files(packages: list[str]) -> list[str]:
    result = subprocess.run(["dpkg", "-L", *packages], capture_output=True, text=True, check=False)
    seen: set[str] = set()
    out: list[str] = []
    for line in result.stdout.splitlines():
        if not line.startswith("/") or line.startswith(EXCLUDED_DIRS) or line in seen:
            continue
        seen.add(line)
        path = Path(line)
        if path.is_symlink() or (path.is_file() and not path.is_dir()):
            out.append(line)
    return sorted(out)
