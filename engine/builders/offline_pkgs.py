"""The offline package set: ``pkgs.<name>`` made from this machine's Debian packages.

Where nixpkgs cannot be fetched, a user's flake still names ``pkgs.python3`` or
``pkgs.curl``. This module says which Debian packages stand for which Nix name
(``PACKAGE_TABLE``), reads what is installed (``package_manifest``: versions and
file lists from dpkg) and writes the flake that replaces the flake's ``nixpkgs``
input (``write_offline_nixpkgs``: nix/stub-pkgs/offline plus ``manifest.json``).
The Nix side (nix/stub-pkgs/offline/debian.nix) turns each entry into a real
derivation: the files, their shared-library closure, ``bin/`` links, patched to
need nothing outside their store path (a busybox guest has no glibc).

The manifest may carry a ``"kernel"`` key (an absolute path to a vmlinux): it
becomes ``pkgs.linuxPackages.kernel.dev/vmlinux``, the kernel mkGuest puts in the
image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mvm.backends import nix_meta
from mvm.engine.base.errors import BuildError

_PYTHON = ("python3.11", "python3.11-minimal", "libpython3.11-minimal",
           "libpython3.11-stdlib", "python3-minimal")  # fmt: skip
_POSTGRES = ("postgresql-15", "postgresql-client-15")

# nix name -> the Debian (bookworm) packages whose files make the derivation.
# Aliases (python311, nodejs_20, ...) map to the same packages as their family.
PACKAGE_TABLE: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "bash": ("bash",),
    "bashInteractive": ("bash",),
    "busybox": ("busybox-static",),
    "coreutils": ("coreutils",),
    "curl": ("curl",),
    "diffutils": ("diffutils",),
    "e2fsprogs": ("e2fsprogs",),
    "findutils": ("findutils",),
    "git": ("git",),
    "gnugrep": ("grep",),
    "gnused": ("sed",),
    "gnutar": ("tar",),
    "gzip": ("gzip",),
    "iproute2": ("iproute2",),
    "jq": ("jq",),
    "nginx": ("nginx",),
    "nodejs": ("nodejs",),
    "nodejs_18": ("nodejs",),
    "nodejs_20": ("nodejs",),
    "openssl": ("openssl",),
    "postgresql": _POSTGRES,
    "postgresql_15": _POSTGRES,
    "procps": ("procps",),
    "python3": _PYTHON,
    "python311": _PYTHON,
    "redis": ("redis-server", "redis-tools"),
    "ripgrep": ("ripgrep",),
    "socat": ("socat",),
    "sqlite": ("sqlite3",),
    "sqlite-interactive": ("sqlite3",),
    "unzip": ("unzip",),
    "wget": ("wget",),
    "xz": ("xz-utils",),
    "zip": ("zip",),
})  # fmt: skip

# dpkg -L entries that are documentation, not the program (the builder image leaves out
# the same ones: a package set entry may only name files the builder VM has).
EXCLUDED_DIRS = tuple(f"/usr/share/{d}/" for d in ("doc", "man", "info", "locale", "lintian"))
# Written next to default.nix: the build support it shares with the tests' host set.
_SUPPORT = "host.nix"


def debian_packages() -> tuple[str, ...]:
    """Every Debian package the table needs, sorted (scripts/setup installs them)."""
    return tuple(sorted({deb for debs in PACKAGE_TABLE.values() for deb in debs}))


def _dpkg_versions(debs: Iterable[str]) -> dict[str, str]:
    """``{package: version}`` of the given packages that are installed (dpkg-query)."""
    wanted = list(debs)
    if shutil.which("dpkg-query") is None:
        return {}
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${db:Status-Status}\t${Version}\n", *wanted],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    versions: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        name, _, rest = line.partition("\t")
        status, _, version = rest.partition("\t")
        if status == "installed" and name in wanted:
            versions[name] = version
    return versions


def _dpkg_files(deb: str) -> list[str]:
    """The paths dpkg installed for ``deb`` (dirs included; the caller filters)."""
    proc = subprocess.run(["dpkg-query", "-L", deb], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(
            f"offline package set: dpkg cannot list the files of {deb}: {proc.stderr.strip()}",
            code="E_OFFLINE_PKG_MISSING",
        )
    return proc.stdout.splitlines()


def _kept(path: str) -> bool:
    if not path.startswith("/") or path.startswith(EXCLUDED_DIRS):
        return False
    # Directories are made as needed; a link to one is merged-usr's /bin, /sbin,
    # /lib (dpkg lists them as the package's directories), not a file to copy.
    return not os.path.isdir(path) and (os.path.islink(path) or os.path.isfile(path))


def package_manifest(names: Iterable[str] | None = None) -> dict[str, Any]:
    """The manifest of ``names`` (default: the whole table) from the INSTALLED packages:
    ``{"packages": {name: {"debs", "versions", "files"}}}``. Every missing Debian
    package (and every name the table lacks) is named in ONE ``E_OFFLINE_PKG_MISSING``."""
    wanted = sorted(PACKAGE_TABLE) if names is None else sorted(set(names))
    unknown = [n for n in wanted if n not in PACKAGE_TABLE]
    if unknown:
        raise BuildError(
            f"offline package set: no Debian package for {', '.join(unknown)} "
            f"(known: {', '.join(sorted(PACKAGE_TABLE))})",
            code="E_OFFLINE_PKG_MISSING",
        )
    debs = sorted({deb for n in wanted for deb in PACKAGE_TABLE[n]})
    versions = _dpkg_versions(debs)
    missing = [deb for deb in debs if deb not in versions]
    if missing:
        raise BuildError(
            f"offline package set: Debian packages not installed: {', '.join(missing)}",
            code="E_OFFLINE_PKG_MISSING",
        )
    files = {deb: sorted({p for p in _dpkg_files(deb) if _kept(p)}) for deb in debs}
    packages = {
        name: {
            "debs": list(PACKAGE_TABLE[name]),
            "versions": {deb: versions[deb] for deb in PACKAGE_TABLE[name]},
            "files": sorted({p for deb in PACKAGE_TABLE[name] for p in files[deb]}),
        }
        for name in wanted
    }
    return {"packages": packages}


def write_offline_nixpkgs(dest: Path, manifest: Mapping[str, Any]) -> Path:
    """Writes the flake ``--override-input nixpkgs path:<dest>`` takes: the offline
    set's Nix files, the build support they share (``host.nix``) and ``manifest.json``.
    ``import <dest> { inherit system; }`` and ``legacyPackages.<system>`` both work."""
    stubs = nix_meta.nix_dir() / "stub-pkgs"
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted((stubs / "offline").glob("*.nix")):
        shutil.copyfile(src, dest / src.name)
    shutil.copyfile(stubs / _SUPPORT, dest / _SUPPORT)
    tmp = dest / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    tmp.replace(dest / "manifest.json")
    return dest
