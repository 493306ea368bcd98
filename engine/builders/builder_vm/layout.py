"""What the builder image holds beyond the standard guest, and where.

The paths here are the contract between the image and the build driver
(``session.py``): Nix's state lives on a persistent volume at ``/nix`` (the rootfs is
read-only), the installed mvm library is at ``LIBRARY`` (its ``nix/`` is the flake the
driver overrides the user's ``mvm`` input with), and the offline package set is the
flake at ``OFFLINE_NIXPKGS``.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from mvm.backends.image import GuestTree
from mvm.engine.builders import offline_pkgs
from mvm.engine.builders.builder_vm.debian import DebianClosure, guest_path

LIBRARY = "/usr/share/mvm/src"  # nix/ and backends/guest/, as the installed package lays them
# Nix 2.8's path: flakes take no ``?dir=``, and nix/ alone lacks ../backends/guest: the
# library is given as a flake at the root of both that forwards to nix/flake.nix.
ROOT_FLAKE = """\
{
  description = "mvm (the library a builder VM builds with): nix/flake.nix, with ../backends/guest";
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.05";
  outputs = args: (import ./nix/flake.nix).outputs args;
}
"""
OFFLINE_NIXPKGS = "/usr/share/mvm/offline-nixpkgs"
KERNEL = "/usr/share/mvm/vmlinux"
NIX_VOLUME = "/mnt/nix"  # the persistent volume (volumes live under /mnt)
NIX_STATE = "/nix"  # bound onto it at boot: store, db, the builds' temp and home
WORK = "/nix/var/mvm/jobs"  # one folder per build, removed when it ends
_TOP_LINKS = frozenset(
    {"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}
)  # per-build workspaces under here
NIX_CONF = """\
build-users-group =
sandbox = false
substituters =
experimental-features = nix-command flakes
warn-dirty = false
"""


def extend(tree: GuestTree, debian: DebianClosure, kernel: Path, library: Path) -> None:
    _debian_files(tree, debian)
    tree.dir(NIX_STATE)  # the volume is bound here by /init (/etc/mvm/binds)
    tree.file("/etc/mvm/binds", f"{NIX_VOLUME} {NIX_STATE}\n")
    tree.dir("/etc/nix")
    tree.file("/etc/nix/nix.conf", NIX_CONF)
    tree.copy(KERNEL, kernel, 0o644)
    _copy_tree(tree, library, f"{LIBRARY}/nix")
    _copy_tree(tree, library.parent / "backends" / "guest", f"{LIBRARY}/backends/guest")
    tree.file(f"{LIBRARY}/flake.nix", ROOT_FLAKE)
    _offline_nixpkgs(tree)
    subprocess.run(["ldconfig", "-r", str(tree.root)], check=False, capture_output=True)


def _debian_files(tree: GuestTree, debian: DebianClosure) -> None:
    for link, target in (("/lib", "usr/lib"), ("/lib64", "usr/lib64")):
        if not tree.exists(link):
            tree.symlink(link, target)
    tree.dir("/usr/lib64")
    for host in debian.files:
        guest = guest_path(host)
        source = Path(host)
        if host in _TOP_LINKS or (tree.root / guest.lstrip("/")).is_dir():
            continue  # merged-usr's own links; a folder the guest tree already has
        if tree.exists(guest) and guest in ("/usr/bin/sh", "/bin/sh"):
            continue  # /init and the services are busybox sh scripts
        if source.is_symlink():
            tree.symlink(guest, os.readlink(source))
        else:
            tree.copy(guest, source, stat.S_IMODE(source.stat().st_mode) & 0o777)
        if host.startswith(("/bin/", "/sbin/")) and not tree.exists(host):
            tree.symlink(host, guest)  # `#!/bin/bash` still finds bash
    alternatives = Path("/etc/alternatives")
    for alt in sorted(alternatives.iterdir()) if alternatives.is_dir() else []:
        if alt.is_symlink() and tree.exists(guest_path(os.readlink(alt))):
            tree.symlink(f"/etc/alternatives/{alt.name}", guest_path(os.readlink(alt)))


def _copy_tree(tree: GuestTree, source: Path, guest: str) -> None:
    for path in sorted(source.rglob("*")):
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        target = f"{guest}/{path.relative_to(source)}"
        if path.is_dir():
            tree.dir(target)
        elif path.is_file():
            tree.copy(target, path, 0o644)


def _offline_nixpkgs(tree: GuestTree) -> None:
    manifest = offline_pkgs.package_manifest()
    manifest["kernel"] = KERNEL
    offline_pkgs.write_offline_nixpkgs(tree.root / OFFLINE_NIXPKGS.lstrip("/"), manifest)
