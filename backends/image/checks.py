"""Input and spec validation for the offline image builder.

Everything here runs before any slow step (the kernel build, mkfs) and touches
nothing but the spec, the host inputs and ``busybox --list-full``, so a bad spec
fails in milliseconds with a ``ConfigError``/``BuildError`` that names the field.
The rules mirror what the staging tree (``image_tree``) can actually write; the
Nix path (``nix/lib/spec.nix``) enforces the same ones.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

import anyio

from mvm.backends.image.layout import _SKIP_APPLETS, AGENT_PATH, BASE_DIRS, BUSYBOX, SETUP_HINT
from mvm.backends.image.shell import bash_provided
from mvm.engine.base.errors import BuildError, ConfigError
from mvm.engine.images.imagespec import ImageSpec

# Paths the builder owns; a spec may not put files there.
_RESERVED = ("/init", "/bin/busybox", AGENT_PATH, "/etc/passwd", "/etc/group")
_RESERVED_TREES = ("/etc/mvm", "/proc", "/sys", "/dev")
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._+@%=,:~/ -]*$")  # quotable for debugfs
_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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
    """A command (or a named shell) entrypoint must name a program the image will contain."""
    if spec.command is not None:
        program = spec.command[0]
    elif spec.entrypoint_kind == "shell" and spec.shell is not None:
        program = spec.shell
    else:
        return
    if _image_has_program(program, spec, applets, packages) or bash_provided(program, spec):
        return  # bash_provided: image_shell's bash-static hook brings /bin/bash
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
        if svc.uid is not None and not 0 <= svc.uid <= 65535:
            raise ConfigError(
                f"service {name}: uid {svc.uid} out of range 0..65535", code="E_SPEC_UID"
            )
        if svc.uid is not None and svc.uid == spec.uids.agent:
            raise ConfigError(
                f"service {name}: uid {svc.uid} equals the agent uid",
                code="E_SPEC_UID",
                hint="the workload must not run as the agent",
            )
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
