"""The staged guest tree: the rootfs as a plain host directory, before mkfs.

``_populate`` writes the guest filesystem contract that ``/init`` relies on
into a ``_Tree``; nothing is chowned on the host (a non-root builder could not),
the tree only records which entries are not owned by root and ``ext4`` applies
those owners inside the image. Every entry's mode is set explicitly after it is
created, so the builder's umask does not leak into the image.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
from pathlib import Path, PurePosixPath
from typing import Any

import attrs

from mvm.backends.image.checks import _check_guest_path
from mvm.backends.image.key import _package_entries
from mvm.backends.image.layout import _SKIP_APPLETS, AGENT_PATH, BASE_DIRS
from mvm.backends.image.shell import add_console_shell
from mvm.engine.base.errors import ConfigError
from mvm.engine.images.imagespec import ImageSpec


@attrs.define
class _Tree:
    """The staged guest tree plus the owner of every entry that is not root."""

    root: Path
    owners: dict[str, tuple[int, int]] = attrs.field(factory=dict)

    def host(self, guest: str) -> Path:
        return self.root / guest.lstrip("/")

    def dir(self, guest: str, mode: int = 0o755, owner: tuple[int, int] | None = None) -> None:
        p = self.host(guest)
        p.mkdir(parents=True, exist_ok=True)
        p.chmod(mode)
        if owner is not None:
            self.owners[guest] = owner

    def file(self, guest: str, data: bytes | str, mode: int = 0o644) -> None:
        p = self._clear(guest)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        p.chmod(mode)

    def copy(self, guest: str, source: Path, mode: int) -> None:
        p = self._clear(guest)
        shutil.copyfile(source, p)
        p.chmod(mode)

    def symlink(self, guest: str, target: str) -> None:
        self._clear(guest).symlink_to(target)

    def _clear(self, guest: str) -> Path:
        p = self.host(guest)
        if p.is_dir() and not p.is_symlink():
            raise ConfigError(f"{guest} is a directory in the image", code="E_SPEC_PATH")
        parent = p.parent
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{guest}: a parent is not a directory", code="E_SPEC_PATH")
        parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink() or p.exists():
            p.unlink()
        return p


ELF_MAGIC = b"\x7fELF"


def _sh_quote(value: str) -> str:
    """Always single-quoted, so the scripts read uniformly."""
    return "'" + value.replace("'", "'\\''") + "'"


def _run_script(command: str | tuple[str, ...]) -> str:
    """A service's run script: argv is exec'd as is, a string runs under sh -c."""
    if isinstance(command, str):
        return f"#!/bin/sh\nexec sh -c {_sh_quote(command)}\n"
    return "#!/bin/sh\nexec " + " ".join(_sh_quote(a) for a in command) + "\n"


def _populate(
    tree: _Tree,
    spec: ImageSpec,
    meta: dict[str, Any],
    agent: Path,
    init: Path,
    busybox: Path,
    applets: list[str],
    packages: list[Path],
) -> None:
    """Write the guest filesystem contract that /init relies on:

    /init (0755), /bin/busybox + one symlink per applet in /bin (and at its
    --list-full path), /usr/bin/mvm-agent (0755), /etc/{passwd,group,hostname,
    hosts,machine-id}, /etc/mvm/image.env (sourceable shell vars),
    /etc/mvm/entrypoint (command kind), /etc/mvm/services/<name>/{run,prestart,
    env,restart,uid}, /etc/mvm/health/<name>/{cmd,interval,timeout},
    /etc/mvm/mvm-meta.json, /etc/mvm/<mvm_files>, the spec's packages, extra
    files and host files.
    """
    tree.dir("/")
    for d in ("/bin", "/sbin", "/usr", "/usr/bin", "/usr/sbin", "/etc", "/etc/mvm", *BASE_DIRS):
        tree.dir(d)
    tree.dir("/tmp", 0o1777)
    tree.dir("/root", 0o700)
    tree.dir("/var/log")
    uid = spec.entrypoint_uid
    if uid != 0:
        tree.dir("/home/app", 0o755, owner=(uid, uid))

    tree.copy("/bin/busybox", busybox, 0o755)
    for path in applets:
        name = PurePosixPath(path).name
        if name in _SKIP_APPLETS:
            continue
        tree.symlink(f"/bin/{name}", "busybox")
        if not path.startswith("bin/"):
            tree.symlink(f"/{path}", "/bin/busybox")
    tree.copy("/init", init, 0o755)
    tree.copy(AGENT_PATH, agent, 0o755)

    agent_uid = spec.uids.agent
    users = [("root", 0, "/root", "/bin/sh"), ("mvm-agent", agent_uid, "/", "/bin/false")]
    if uid != 0:
        users.append(("app", uid, "/home/app", "/bin/sh"))
    if 65534 not in (uid, agent_uid):
        users.append(("nobody", 65534, "/", "/bin/false"))
    service_uids = spec.service_uids
    for name, svc_uid in sorted(service_uids.items()):  # svc-<name>, one entry per new uid
        if all(svc_uid != u for _, u, _, _ in users):
            users.append((f"svc-{name}", svc_uid, "/", "/bin/false"))
    tree.file("/etc/passwd", "".join(f"{n}:x:{u}:{u}:{n}:{h}:{s}\n" for n, u, h, s in users))
    tree.file("/etc/group", "".join(f"{n}:x:{u}:\n" for n, u, _, _ in users))
    tree.file("/etc/hostname", f"{spec.name}\n")
    tree.file("/etc/mvm/name", f"{spec.name}\n")
    tree.file("/etc/hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{spec.name}\n")
    tree.file("/etc/machine-id", b"")
    # Single-tenant guest: let the (non-root) workload bind ports below 1024;
    # /init applies this with `sysctl -p` before dropping privileges.
    tree.file("/etc/sysctl.conf", "net.ipv4.ip_unprivileged_port_start=0\n")

    env = {
        "MVM_NAME": spec.name,
        "MVM_ENTRYPOINT_KIND": spec.entrypoint_kind,
        "MVM_ENTRYPOINT_UID": str(uid),
        "MVM_AGENT_UID": str(agent_uid),
        "MVM_SEALED": "1" if spec.sealed else "0",
        "MVM_SERVICES": " ".join(sorted(spec.services)),
        "MVM_SHELL": spec.shell_program,
        "MVM_SECCOMP": spec.seccomp,
    }
    tree.file("/etc/mvm/image.env", "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
    if spec.command is not None:
        argv = " ".join(_sh_quote(a) for a in spec.command)
        tree.file("/etc/mvm/entrypoint", f"#!/bin/sh\nexec {argv}\n", 0o755)
    for name, svc in sorted(spec.services.items()):
        base = f"/etc/mvm/services/{name}"
        tree.dir("/etc/mvm/services")
        tree.dir(base)
        tree.file(f"{base}/run", _run_script(svc.command), 0o755)
        if svc.pre_start:
            tree.file(
                f"{base}/prestart", f"#!/bin/sh\nexec sh -c {_sh_quote(svc.pre_start)}\n", 0o755
            )
        tree.file(
            f"{base}/env", "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(svc.env.items()))
        )
        tree.file(f"{base}/restart", f"{svc.restart}\n")
        tree.file(f"{base}/uid", f"{service_uids[name]}\n")
    for name, hc in sorted(spec.health_checks.items()):
        base = f"/etc/mvm/health/{name}"
        tree.dir("/etc/mvm/health")
        tree.dir(base)
        tree.file(f"{base}/cmd", f"{hc.health_cmd}\n")
        tree.file(f"{base}/interval", f"{hc.health_interval_secs}\n")
        tree.file(f"{base}/timeout", f"{hc.health_timeout_secs}\n")
    tree.file("/etc/mvm/mvm-meta.json", _meta_bytes(meta))
    for name, content in sorted(spec.mvm_files.items()):
        tree.file(f"/etc/mvm/{name}", content)
    add_console_shell(tree, spec)  # /bin/bash from bash-static for entrypoint.shell

    for pkg in packages:
        _copy_package(tree, pkg)
    for guest, content in sorted(spec.extra_files.items()):
        tree.file(guest, content, spec.extra_file_modes.get(guest, 0o644))
    for guest, source in sorted(spec.host_files.items()):
        src = Path(source)
        tree.copy(guest, src, stat.S_IMODE(src.stat().st_mode) & 0o755)
    if spec.sealed:
        _execute_only(tree)


def _execute_only(tree: _Tree) -> None:
    """Sealed images: root-owned ELF programs lose their group/other read bits (0755 ->
    0711), so every workload process is non-dumpable from its execve on, whatever its
    language: the kernel gives a process that cannot read its own program the dumpable
    value of fs.suid_dumpable (0), as PR_SET_DUMPABLE=0 would, and no same-uid process
    can ptrace it or read its /proc/PID/mem. A prctl before exec cannot do this (execve
    resets the flag). Shared objects (``*.so*``) stay readable: ld.so reads them.
    nix/lib/rootfs.nix applies the same rule."""
    for path in sorted(tree.root.rglob("*")):
        if path.is_symlink() or not path.is_file() or ".so" in path.name:
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        guest = "/" + path.relative_to(tree.root).as_posix()
        if not mode & 0o111 or not mode & 0o044 or guest in tree.owners:
            continue
        with path.open("rb") as f:
            if f.read(4) != ELF_MAGIC:
                continue
        path.chmod(mode & ~0o044)


def _copy_package(tree: _Tree, pkg: Path) -> None:
    """A host path lands at the same guest path; inside directories symlinks stay symlinks."""
    guest = str(pkg)
    if not pkg.is_dir():
        tree.copy(guest, pkg, stat.S_IMODE(pkg.stat().st_mode) & 0o777)
        return
    for rel, desc in _package_entries(pkg):
        target = guest if rel == "." else f"{guest}/{rel}"
        _check_guest_path(target, "E_SPEC_PACKAGE")
        source = pkg / rel
        if desc == "dir":
            tree.dir(target, stat.S_IMODE(source.stat().st_mode) & 0o777 | 0o700)
        elif desc.startswith("symlink "):
            tree.symlink(target, os.readlink(source))
        else:
            tree.copy(target, source, stat.S_IMODE(source.stat().st_mode) & 0o777)


def _meta_bytes(meta: dict[str, Any]) -> bytes:
    return (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
