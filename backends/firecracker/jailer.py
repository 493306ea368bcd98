"""Firecracker's ``jailer``: chroot, uid/gid drop, cgroups and namespaces (argv only, pure).

The jailer copies the Firecracker binary into
``<chroot_base>/<exec name>/<id>/root``, enters that chroot, joins cgroups, drops
to ``uid:gid`` and execs Firecracker with the arguments after ``--``. Every path
Firecracker later receives through the API is then *inside* the chroot, so the
kernel, disks and snapshot files must be linked into it first;
``chroot_root``/``host_path`` give both views of the same file.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import attrs

from mvm.engine.base.errors import ConfigError

DEFAULT_CHROOT_BASE = Path("/srv/jailer")
API_SOCK_IN_CHROOT = "/run/firecracker.socket"
_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
_CGROUP = re.compile(r"[a-z0-9_]+\.[a-z0-9_.]+=\S.*")


@attrs.frozen
class JailerConfig:
    """How to jail one Firecracker: who it runs as and what it may use."""

    jailer: Path
    firecracker: Path
    uid: int
    gid: int
    chroot_base: Path = DEFAULT_CHROOT_BASE
    cgroup_version: int = 2
    cgroups: tuple[str, ...] = ()  # e.g. "cpu.max=50000 100000", "memory.max=268435456"
    parent_cgroup: str | None = None  # e.g. "mvm": groups every VM under one parent
    netns: Path | None = None  # e.g. /var/run/netns/mvm-a
    new_pid_ns: bool = True
    resource_limits: tuple[str, ...] = ()  # e.g. "no-file=1024", "fsize=..."


def validate_id(vm_id: str) -> str:
    if not _ID.fullmatch(vm_id):
        raise ConfigError(
            f"jailer id {vm_id!r} must be 1-64 letters, digits or '-'", code="E_FC_JAIL_ID"
        )
    return vm_id


def chroot_root(cfg: JailerConfig, vm_id: str) -> Path:
    """The host directory the jailed Firecracker sees as ``/``."""
    return cfg.chroot_base / cfg.firecracker.name / validate_id(vm_id) / "root"


def host_path(cfg: JailerConfig, vm_id: str, inside: str | PurePosixPath) -> Path:
    """Host path of a chroot-absolute path (``/run/firecracker.socket`` -> ``.../root/run/...``)."""
    inner = PurePosixPath(inside)
    if not inner.is_absolute() or ".." in inner.parts:
        raise ConfigError(f"{inside} is not a clean absolute path", code="E_FC_JAIL_PATH")
    return chroot_root(cfg, vm_id).joinpath(*inner.parts[1:])


def jailer_argv(
    cfg: JailerConfig,
    vm_id: str,
    *,
    api_sock: str = API_SOCK_IN_CHROOT,
    extra_firecracker_args: tuple[str, ...] = (),
) -> list[str]:
    """The full jailer command line; Firecracker's own arguments follow ``--``."""
    validate_id(vm_id)
    if cfg.uid < 0 or cfg.gid < 0:
        raise ConfigError("jailer uid/gid must be non-negative", code="E_FC_JAIL_USER")
    if cfg.cgroup_version not in (1, 2):
        raise ConfigError(
            f"cgroup version {cfg.cgroup_version} is not 1 or 2", code="E_FC_JAIL_CGROUP"
        )
    argv = [
        str(cfg.jailer),
        "--id",
        vm_id,
        "--exec-file",
        str(cfg.firecracker),
        "--uid",
        str(cfg.uid),
        "--gid",
        str(cfg.gid),
        "--chroot-base-dir",
        str(cfg.chroot_base),
        "--cgroup-version",
        str(cfg.cgroup_version),
    ]
    for cgroup in cfg.cgroups:
        if not _CGROUP.fullmatch(cgroup):
            raise ConfigError(
                f"cgroup setting {cgroup!r} is not FILE=VALUE (e.g. cpu.max=50000)",
                code="E_FC_JAIL_CGROUP",
            )
        argv += ["--cgroup", cgroup]
    if cfg.parent_cgroup is not None:
        argv += ["--parent-cgroup", cfg.parent_cgroup]
    for limit in cfg.resource_limits:
        argv += ["--resource-limit", limit]
    if cfg.netns is not None:
        argv += ["--netns", str(cfg.netns)]
    if cfg.new_pid_ns:
        argv.append("--new-pid-ns")
    argv += ["--", "--api-sock", api_sock, *extra_firecracker_args]
    return argv
