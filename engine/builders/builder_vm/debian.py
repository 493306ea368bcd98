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


def _query(fmt: str, names: Iterable[str]) -> dict[str, str]:
    """``dpkg-query -W`` for installed packages; names it does not know are left out."""
    names = list(names)
    if not names:
        return {}
    result = subprocess.run(
        ["dpkg-query", "-W", f"-f=${{Package}}\\t${{db:Status-Abbrev}}\\t{fmt}\\n", *names],
        capture_output=True,
        text=True,
        check=False,
    )
    found: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, status, value = ([*line.split("\t", 2), "", ""])[:3]
        if status.startswith("ii"):
            found[name.split(":")[0]] = value
    return found


def _providers() -> dict[str, str]:
    """Virtual package -> an installed package that provides it (``awk`` -> ``mawk``)."""
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\\t${db:Status-Abbrev}\\t${Provides}\\n"],
        capture_output=True,
        text=True,
        check=False,
    )
    provides: dict[str, str] = {}
    for line in result.stdout.splitlines():
        name, status, value = ([*line.split("\t", 2), "", ""])[:3]
        if not status.startswith("ii"):
            continue
        for item in value.split(","):
            virtual = item.strip().split(" ")[0]
            if virtual:
                provides.setdefault(virtual, name.split(":")[0])
    return provides


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
    versions: dict[str, str] = {}
    missing: set[str] = set()
    providers: dict[str, str] | None = None
    todo = list(dict.fromkeys(roots))
    while todo:
        batch, todo = [n for n in dict.fromkeys(todo) if n not in versions], []
        info = _query("${Version}\\t${Depends},${Pre-Depends}", batch)
        for name in batch:
            if name not in info:
                missing.add(name)
                continue
            version, _, depends = info[name].partition("\t")
            versions[name] = version
            for group in _alternatives(depends):
                installed = _query("${Version}", group)
                choice = next((n for n in group if n in installed), None)
                if choice is None:
                    providers = _providers() if providers is None else providers
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
