"""The offline image builder: ImageSpec + kernel + agent + init -> a bootable image directory.

The output has the same layout as the Nix path (``vmlinux``, ``rootfs.ext4``,
``mvm-meta.json``) so the runtime cannot tell them apart. The rootfs is made
without root and without mounting: the guest tree is staged in a plain
directory and written by ``mkfs.ext4 -d``; ownership is then set inside the
image with ``debugfs -w`` (``set_inode_field``), because ``mke2fs -d`` copies
the staging files' owners and its ``root_owner=`` option covers only ``/``.
So a non-root user gets the same root-owned image as root does, and no chown
is needed anywhere.

The image is reproducible: the same spec and inputs give a byte-identical
``rootfs.ext4`` (fixed UUID and htree hash seed derived from the cache key,
``E2FSPROGS_FAKE_TIME`` for superblock/crtime, fixed atime/mtime/ctime on every
inode, mke2fs 1.47 sorting directory entries, and our own ``mke2fs.conf`` so the
host's defaults do not leak in). Images are content-addressed under
``<cache>/images/<key>/`` and built in a ``.build-*`` work dir that is renamed
into place, so a crash or Ctrl-C never leaves a half image behind.

Guest filesystem contract (read by ``/init``): see ``_populate`` below.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import attrs
import cattrs
import rfc8785
import structlog

from mvm.engine.errors import BuildError, ConfigError
from mvm.engine.imagespec import ImageSpec
from mvm.engine.paths import cache_dir

log = structlog.get_logger("mvm.image")

# Bump when the rootfs layout or the mkfs recipe changes.
RECIPE_VERSION = "1"
BUSYBOX = Path("/bin/busybox")
AGENT_PATH = "/usr/bin/mvm-agent"
EXPECTED_BOOT_MS = 700
SOURCE_DATE_EPOCH = 1704067200  # 2024-01-01T00:00:00Z: every timestamp in the image
MIN_IMAGE_BYTES = 32 * 1024 * 1024
SETUP_HINT = "run ./scripts/setup"
BASE_DIRS = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var", "/mnt", "/root", "/home", "/srv")
# Paths the builder owns; a spec may not put files there.
_RESERVED = ("/init", "/bin/busybox", AGENT_PATH, "/etc/passwd", "/etc/group")
_RESERVED_TREES = ("/etc/mvm", "/proc", "/sys", "/dev")
# PID 1 is /init. Without busybox's init the kernel's fallback (init= missing from the
# command line) ends in /bin/sh on the console, which is easy to spot.
_SKIP_APPLETS = frozenset({"busybox", "init", "linuxrc"})
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+@%=,:~/ -]*$")  # quotable for debugfs
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MKE2FS_CONF = """\
[defaults]
	base_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
	default_mntopts = acl,user_xattr
	enable_periodic_fsck = 0
	blocksize = 4096
	inode_size = 256
	inode_ratio = 16384
	reserved_ratio = 0

[fs_types]
	ext4 = {
		features = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
	}
"""


@attrs.frozen
class ImageArtifacts:
    rootfs: Path
    vmlinux: Path
    meta_path: Path
    meta: dict[str, Any]
    key: str


async def build_image(
    spec: ImageSpec,
    *,
    kernel: Path,
    agent: Path,
    init: Path,
    cache: Path | None = None,
    busybox: Path = BUSYBOX,
) -> ImageArtifacts:
    """Build (or reuse) the image for ``spec``; ``cache`` replaces ``cache_dir()`` as the root."""
    _check_inputs(kernel=kernel, agent=agent, init=init, busybox=busybox)
    applets, packages = await _checked_spec(spec, busybox)
    key, spec_hash = await anyio.to_thread.run_sync(
        _cache_key, spec, kernel, agent, init, busybox, packages
    )
    images = (cache or cache_dir()) / "images"
    final = images / key
    hit = _load_existing(final, key)
    if hit is not None:
        log.debug("image.cache_hit", image=spec.name, key=key)
        return hit
    if final.exists():  # damaged by hand (a file deleted): rebuild it
        log.warning("image.cache_damaged", key=key, path=str(final))
        await anyio.to_thread.run_sync(shutil.rmtree, final, True)
    images.mkdir(parents=True, exist_ok=True)
    work = images / f".build-{key}-{uuid.uuid4().hex[:8]}"
    started = anyio.current_time()
    try:
        work.mkdir()
        out = work / "out"
        out.mkdir()
        meta = image_meta(spec, spec_hash)
        tree = _Tree(work / "tree")
        await anyio.to_thread.run_sync(
            _populate, tree, spec, meta, agent, init, busybox, applets, packages
        )
        await _make_filesystem(tree, out / "rootfs.ext4", work, key)
        _write_meta(out / "mvm-meta.json", meta)
        await anyio.to_thread.run_sync(_link_or_copy, kernel, out / "vmlinux")
        try:
            os.rename(out, final)  # atomic promotion
        except OSError:
            if _load_existing(final, key) is None:  # not a concurrent twin: a real failure
                raise
            log.debug("image.lost_race", key=key)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(shutil.rmtree, work, True)
    log.info(
        "image.built",
        image=spec.name,
        key=key,
        seconds=round(anyio.current_time() - started, 3),
    )
    result = _load_existing(final, key)
    assert result is not None
    return result


def image_meta(spec: ImageSpec, spec_hash: str) -> dict[str, Any]:
    """mvm-meta.json: the fields of mkGuest's ``passthru.mvm`` plus sizing and names."""
    return {
        "name": spec.name,
        "accessible": spec.accessible,
        "sealed": spec.sealed,
        "entrypointKind": spec.entrypoint_kind,
        "init_system": "busybox",
        "expected_boot_ms": EXPECTED_BOOT_MS,
        "agent_binary": AGENT_PATH,
        "rootless_entrypoint": spec.entrypoint_uid != 0,
        "uids": {"agent": spec.uids.agent, "entrypoint": spec.entrypoint_uid},
        "vmlinux_present": True,
        "vcpus": spec.vcpus,
        "memory_mib": spec.memory_mib,
        "services": sorted(spec.services),
        "health_checks": sorted(spec.health_checks),
        "spec_hash": spec_hash,
    }


def spec_json(spec: ImageSpec) -> bytes:
    """Canonical (RFC 8785) JSON of the spec: the stable identity of what was asked for."""
    data = cattrs.Converter().unstructure(spec)
    for field in ("host_files", "mvm_files"):  # newer fields: absent when unused, so
        if not data[field]:  # images built before they existed keep their hash
            del data[field]
    encoded: bytes = rfc8785.dumps(data)
    return encoded


# ---------------------------------------------------------------- validation


def _check_inputs(*, kernel: Path, agent: Path, init: Path, busybox: Path) -> None:
    if not kernel.is_file():
        raise ConfigError(
            f"kernel {kernel} does not exist",
            code="E_KERNEL_MISSING",
            hint="run mvmctl kernel build or set MVM_KERNEL",
        )
    for path, what, code in (
        (agent, "guest agent", "E_AGENT_MISSING"),
        (init, "init", "E_INIT_MISSING"),
    ):
        if not path.is_file():
            raise BuildError(f"{what} {path} does not exist", code=code)
    if not busybox.is_file():
        raise BuildError(
            f"{busybox} is missing",
            code="E_BUSYBOX",
            hint=f"apt-get install busybox-static ({SETUP_HINT})",
        )
    if _elf_is_dynamic(busybox):
        raise BuildError(
            f"{busybox} is dynamically linked and cannot run in the guest",
            code="E_BUSYBOX",
            hint="apt-get install busybox-static",
        )


def _elf_is_dynamic(path: Path) -> bool:
    """True if the ELF has a PT_INTERP header (needs a loader the guest lacks)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            raise BuildError(f"{path} is not an x86-64 ELF binary", code="E_BUSYBOX")
        phoff = int.from_bytes(head[0x20:0x28], "little")
        phentsize = int.from_bytes(head[0x36:0x38], "little")
        phnum = int.from_bytes(head[0x38:0x3A], "little")
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    pt_interp = 3
    return any(
        int.from_bytes(table[i : i + 4], "little") == pt_interp
        for i in range(0, len(table), phentsize)
    )


async def check_spec(spec: ImageSpec, busybox: Path = BUSYBOX) -> None:
    """Reject a spec the builder cannot turn into a bootable image, before any slow step
    (the kernel build) runs, so bad input costs milliseconds, not minutes."""
    await _checked_spec(spec, busybox)


async def _checked_spec(spec: ImageSpec, busybox: Path) -> tuple[list[str], list[Path]]:
    _validate_spec(spec)
    if not busybox.is_file():
        raise BuildError(f"{busybox} is missing", code="E_BUSYBOX", hint=SETUP_HINT)
    applets = await _busybox_applets(busybox)
    packages = _resolve_packages(spec, applets)
    _check_entrypoint(spec, applets, packages)
    return applets, packages


def _check_entrypoint(spec: ImageSpec, applets: list[str], packages: list[Path]) -> None:
    """A command entrypoint must name a program the image will contain."""
    if spec.command is None:
        return
    program = spec.command[0]
    if _image_has_program(program, spec, applets, packages):
        return
    raise ConfigError(
        f"entrypoint {program!r} does not exist in the image",
        code="E_SPEC_ENTRYPOINT",
        hint="add it to packages (a host path or busybox applet) or extra_files",
    )


def _image_has_program(
    program: str, spec: ImageSpec, applets: list[str], packages: list[Path]
) -> bool:
    applet_paths = {"/" + a for a in applets} | {f"/bin/{PurePosixPath(a).name}" for a in applets}
    applet_paths -= {f"/bin/{n}" for n in _SKIP_APPLETS} | {f"/sbin/{n}" for n in _SKIP_APPLETS}
    if not program.startswith("/"):
        names = {PurePosixPath(p).name for p in applet_paths}
        names |= {PurePosixPath(f).name for f in [*spec.extra_files, *spec.host_files]}
        names |= {p.name for p in packages if p.parent.name in ("bin", "sbin")}
        return program in names
    if program in applet_paths or program in spec.extra_files or program in spec.host_files:
        return True
    if program == "/bin/busybox":
        return True
    for pkg in packages:
        if program == str(pkg) or (pkg.is_dir() and program.startswith(f"{pkg}/")):
            return Path(program).exists()
    return False


def _validate_spec(spec: ImageSpec) -> None:
    """What the offline builder needs beyond ImageSpec's own checks."""
    for label, uid in (("agent", spec.uids.agent), ("entrypoint", spec.entrypoint_uid)):
        if not 0 <= uid <= 65535:
            raise ConfigError(f"{label} uid {uid} out of range 0..65535", code="E_SPEC_UID")
    if spec.entrypoint_uid == spec.uids.agent:
        raise ConfigError(
            f"entrypoint uid {spec.entrypoint_uid} equals the agent uid",
            code="E_SPEC_UID",
            hint="the workload must not run as the agent",
        )
    for name, svc in spec.services.items():
        if not _SERVICE_NAME.match(name):
            raise ConfigError(f"service name {name!r} is invalid", code="E_SPEC_SERVICE")
        for k, v in svc.env.items():
            if not _ENV_KEY.match(k) or "\n" in v or "\0" in v:
                raise ConfigError(
                    f"service {name}: env {k!r} must be a shell name with a one-line value",
                    code="E_SPEC_ENV",
                )
    for name, hc in spec.health_checks.items():
        if hc.health_interval_secs <= 0 or hc.health_timeout_secs <= 0:
            raise ConfigError(
                f"health check {name}: interval and timeout must be positive",
                code="E_SPEC_HEALTH",
            )
    for path in spec.extra_files:
        _check_guest_path(path, "E_SPEC_PATH")
    for path, source in spec.host_files.items():
        _check_guest_path(path, "E_SPEC_PATH")
        if path in spec.extra_files:
            raise ConfigError(f"{path} is both an extra file and a host file", code="E_SPEC_PATH")
        if not Path(source).is_file():
            raise ConfigError(f"host file {source} (for {path}) does not exist", code="E_SPEC_PATH")


def _check_guest_path(path: str, code: str) -> None:
    if not _SAFE_PATH.match(path) or path.endswith("/") or "//" in path:
        raise ConfigError(
            f"path {path!r} is not a plain absolute path",
            code=code,
            hint="use letters, digits, '._+@%=,:~- ' and single '/'",
        )
    if (
        path in _RESERVED
        or path in BASE_DIRS
        or any(path == t or path.startswith(t + "/") for t in _RESERVED_TREES)
    ):
        raise ConfigError(f"path {path} is reserved by the image builder", code=code)


async def _busybox_applets(busybox: Path) -> list[str]:
    """``busybox --list-full``: install paths relative to /, e.g. ``usr/bin/wget``."""
    result = await anyio.run_process([str(busybox), "--list-full"], check=False)
    if result.returncode != 0:
        raise BuildError(f"{busybox} --list-full failed", code="E_BUSYBOX")
    return sorted(line for line in result.stdout.decode().split() if line)


def _resolve_packages(spec: ImageSpec, applets: list[str]) -> list[Path]:
    """Applet names need nothing (busybox provides them); absolute paths are host files to copy."""
    names = {PurePosixPath(a).name for a in applets}
    host: list[Path] = []
    for pkg in spec.packages:
        if pkg.startswith("/"):
            _check_guest_path(pkg, "E_SPEC_PACKAGE")
            path = Path(pkg)
            if not path.exists():
                raise ConfigError(f"package path {pkg} does not exist", code="E_SPEC_PACKAGE")
            host.append(path)
        elif pkg not in names:
            raise ConfigError(
                f"package {pkg!r} is neither a busybox applet nor an absolute host path",
                code="E_SPEC_PACKAGE",
                hint="see `busybox --list`, or give /path/to/binary",
            )
    return host


# ---------------------------------------------------------------- cache key


def _cache_key(
    spec: ImageSpec, kernel: Path, agent: Path, init: Path, busybox: Path, packages: list[Path]
) -> tuple[str, str]:
    canonical = spec_json(spec)
    spec_hash = hashlib.sha256(canonical).hexdigest()
    h = hashlib.sha256()

    def part(data: bytes) -> None:
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)

    part(b"mvm-image")
    part(RECIPE_VERSION.encode())
    part(canonical)
    for path in (kernel, agent, init, busybox):
        part(_file_sha256(path).encode())
    for pkg in packages:
        part(str(pkg).encode())
        for rel, desc in _package_entries(pkg):
            part(rel.encode())
            part(desc.encode())
    for guest, source in sorted(spec.host_files.items()):
        part(guest.encode())
        part(_file_sha256(Path(source)).encode())
    return h.hexdigest(), spec_hash


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _package_entries(root: Path) -> Iterable[tuple[str, str]]:
    """Every entry a package copies, with what identifies its content, in sorted order."""
    if not root.is_dir():
        yield "", f"file {stat.S_IMODE(root.stat().st_mode):o} {_file_sha256(root)}"
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        yield str(base.relative_to(root)), "dir"
        for name in sorted(filenames + [d for d in dirnames if (base / d).is_symlink()]):
            p = base / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                yield rel, f"symlink {os.readlink(p)}"
            elif p.is_file():
                yield rel, f"file {stat.S_IMODE(p.stat().st_mode):o} {_file_sha256(p)}"
            else:
                raise ConfigError(f"package entry {p} is not a file", code="E_SPEC_PACKAGE")


# ---------------------------------------------------------------- staging tree


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


def _sh_quote(value: str) -> str:
    """Always single-quoted, so the scripts read uniformly."""
    return "'" + value.replace("'", "'\\''") + "'"


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
    env,restart}, /etc/mvm/health/<name>/{cmd,interval,timeout},
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
    tree.file("/etc/passwd", "".join(f"{n}:x:{u}:{u}:{n}:{h}:{s}\n" for n, u, h, s in users))
    tree.file("/etc/group", "".join(f"{n}:x:{u}:\n" for n, u, _, _ in users))
    tree.file("/etc/hostname", f"{spec.name}\n")
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
    }
    tree.file("/etc/mvm/image.env", "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
    if spec.command is not None:
        argv = " ".join(_sh_quote(a) for a in spec.command)
        tree.file("/etc/mvm/entrypoint", f"#!/bin/sh\nexec {argv}\n", 0o755)
    for name, svc in sorted(spec.services.items()):
        base = f"/etc/mvm/services/{name}"
        tree.dir("/etc/mvm/services")
        tree.dir(base)
        tree.file(f"{base}/run", f"#!/bin/sh\nexec sh -c {_sh_quote(svc.command)}\n", 0o755)
        if svc.pre_start:
            tree.file(
                f"{base}/prestart", f"#!/bin/sh\nexec sh -c {_sh_quote(svc.pre_start)}\n", 0o755
            )
        tree.file(
            f"{base}/env", "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(svc.env.items()))
        )
        tree.file(f"{base}/restart", f"{svc.restart}\n")
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

    for pkg in packages:
        _copy_package(tree, pkg)
    for guest, content in sorted(spec.extra_files.items()):
        tree.file(guest, content)
    for guest, source in sorted(spec.host_files.items()):
        src = Path(source)
        tree.copy(guest, src, stat.S_IMODE(src.stat().st_mode) & 0o755)


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


# ---------------------------------------------------------------- filesystem


def _tree_entries(root: Path) -> tuple[list[str], int]:
    """Guest paths of every entry (sorted) and the bytes the content will need."""
    paths = ["/"]
    size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = base / name
            paths.append("/" + str(p.relative_to(root)))
            st = p.lstat()
            size += 4096 + (-(-st.st_size // 4096) * 4096 if stat.S_ISREG(st.st_mode) else 0)
    return paths, size


def _fixed_times(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.utime(
                Path(dirpath) / name,
                (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH),
                follow_symlinks=False,
            )
    os.utime(root, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH))


def _fs_ids(key: str) -> tuple[str, str]:
    digest = hashlib.sha256(b"mvm-rootfs-ids" + key.encode()).digest()
    fs_uuid = uuid.UUID(bytes=digest[:16], version=4)
    hash_seed = uuid.UUID(bytes=digest[16:32], version=4)
    return str(fs_uuid), str(hash_seed)


def _e2fs_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MKE2FS_", "E2FSPROGS_"))}
    conf = work / "mke2fs.conf"
    conf.write_text(_MKE2FS_CONF)
    env.update(
        LC_ALL="C",
        MKE2FS_CONFIG=str(conf),
        E2FSPROGS_FAKE_TIME=str(SOURCE_DATE_EPOCH),
        SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH),
    )
    return env


async def _make_filesystem(tree: _Tree, image: Path, work: Path, key: str) -> None:
    await anyio.to_thread.run_sync(_fixed_times, tree.root)
    paths, content = await anyio.to_thread.run_sync(_tree_entries, tree.root)
    size = max(MIN_IMAGE_BYTES, 2 * content)
    size = -(-size // (1 << 20)) * (1 << 20)
    inodes = 2 * len(paths) + 1024
    fs_uuid, hash_seed = _fs_ids(key)
    env = _e2fs_env(work)
    await _run_e2fs(
        [
            "mkfs.ext4", "-q", "-F", "-t", "ext4", "-L", "mvm-root",
            "-N", str(inodes), "-U", fs_uuid,
            "-E", f"hash_seed={hash_seed},root_owner=0:0,lazy_itable_init=0",
            "-d", str(tree.root), str(image), f"{size // 1024}k",
        ],
        env,
    )  # fmt: skip
    commands = work / "debugfs.cmd"
    t = f"@{SOURCE_DATE_EPOCH}"
    with commands.open("w") as f:
        for path in paths:
            uid, gid = tree.owners.get(path, (0, 0))
            q = f'"{path}"'
            f.write(f"sif {q} uid {uid}\nsif {q} gid {gid}\n")
            for field in ("atime", "mtime", "ctime", "crtime"):
                f.write(f"sif {q} {field} {t}\n")
    await _run_e2fs(["debugfs", "-w", "-f", str(commands), str(image)], env, debugfs=True)
    await _run_e2fs(["e2fsck", "-f", "-n", str(image)], env)
    log.debug("image.fs", size=size, entries=len(paths), content=content)


async def _run_e2fs(argv: list[str], env: dict[str, str], *, debugfs: bool = False) -> None:
    try:
        result = await anyio.run_process(argv, env=env, check=False)
    except FileNotFoundError:
        raise BuildError(
            f"{argv[0]} not found",
            code="E_E2FSPROGS",
            hint=f"apt-get install e2fsprogs ({SETUP_HINT})",
        ) from None
    errors = result.stderr.decode(errors="replace").strip()
    if debugfs:
        # debugfs exits 0 even when a command fails; its stderr is the only signal.
        errors = "\n".join(line for line in errors.splitlines() if not line.startswith("debugfs "))
    if result.returncode != 0 or (debugfs and errors):
        detail = (errors or result.stdout.decode(errors="replace")).strip().splitlines()
        raise BuildError(
            f"{argv[0]} failed (exit {result.returncode}): {detail[-1] if detail else ''}",
            code="E_IMAGE_FS",
        )


def _meta_bytes(meta: dict[str, Any]) -> bytes:
    return (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    path.write_bytes(_meta_bytes(meta))


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:  # cross-device, or protected_hardlinks on a file we do not own
        shutil.copyfile(source, dest)


def _load_existing(directory: Path, key: str) -> ImageArtifacts | None:
    rootfs, vmlinux, meta_path = (
        directory / "rootfs.ext4",
        directory / "vmlinux",
        directory / "mvm-meta.json",
    )
    if not (rootfs.is_file() and vmlinux.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    return ImageArtifacts(rootfs=rootfs, vmlinux=vmlinux, meta_path=meta_path, meta=meta, key=key)
