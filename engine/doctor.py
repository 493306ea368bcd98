"""Prerequisite checks with fix hints, for ``mvmctl doctor`` and for humans.

Each check says what it found and, when something is missing, the one command
that fixes it. Required checks gate the main job (build + boot under QEMU);
optional ones (KVM, vhost-vsock, Nix, Firecracker) only widen what is possible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import attrs

from mvm.engine.base.paths import cache_dir, make_private_dirs, mvm_home
from mvm.engine.base.settings import current_settings

Status = Literal["ok", "warn", "fail"]
SETUP_HINT = "run ./scripts/setup"


@attrs.frozen
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""
    required: bool = True


def _which(binary: str, name: str, package: str, *, required: bool = True) -> Check:
    path = shutil.which(binary)
    if path:
        return Check(name, "ok", path, required=required)
    return Check(
        name,
        "fail" if required else "warn",
        f"{binary} not found",
        fix=f"apt-get install {package} ({SETUP_HINT})",
        required=required,
    )


def _qemu() -> Check:
    path = shutil.which("qemu-system-x86_64")
    if not path:
        return Check(
            "qemu",
            "fail",
            "qemu-system-x86_64 not found",
            fix=f"apt-get install qemu-system-x86 ({SETUP_HINT})",
        )
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return Check("qemu", "ok", out.stdout.splitlines()[0] if out.stdout else path)


def _kvm() -> Check:
    if not os.path.exists("/dev/kvm"):
        return Check(
            "kvm",
            "warn",
            "/dev/kvm absent: QEMU will use TCG (slower)",
            fix="enable virtualization or load kvm modules",
            required=False,
        )
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return Check(
            "kvm",
            "warn",
            "/dev/kvm not accessible",
            fix="add yourself to group kvm",
            required=False,
        )
    from mvm.backends.vmm import kvm_verdict

    works, reason = kvm_verdict()  # a tiny test boot, cached per host boot
    if not works:
        return Check(
            "kvm",
            "warn",
            f"/dev/kvm present but unusable for guests ({reason}): QEMU uses TCG",
            fix="run on bare metal or a host with working nested virtualization",
            required=False,
        )
    return Check("kvm", "ok", f"/dev/kvm works ({reason})", required=False)


def _backend(name: str) -> Check:
    """An optional VMM backend, as the engine itself would judge it before a boot."""
    from mvm.backends.registry import get_backend

    avail = get_backend(name).availability()
    if avail.ok:
        return Check(name, "ok", avail.reason, required=False)
    detail, _, fix = avail.reason.partition("; ")
    return Check(name, "warn", detail, fix=fix, required=False)


def _stub_backend() -> Check:
    """``--backend stub`` is always there and runs exec on the host: say so."""
    from mvm.backends.stub import NO_ISOLATION

    return Check("stub", "warn", NO_ISOLATION, fix="use it for tests only", required=False)


def _busybox() -> Check:
    path = Path("/bin/busybox")
    if not path.exists():
        return Check(
            "busybox-static",
            "fail",
            "/bin/busybox missing",
            fix=f"apt-get install busybox-static ({SETUP_HINT})",
        )
    out = subprocess.run(["file", "-b", str(path)], capture_output=True, text=True, check=False)
    if out.returncode == 0 and "dynamically linked" in out.stdout:
        return Check(
            "busybox-static",
            "fail",
            "/bin/busybox is dynamically linked",
            fix="apt-get install busybox-static",
        )
    return Check("busybox-static", "ok", str(path))


def _kernel() -> Check:
    kernel = current_settings().kernel
    if kernel is not None:
        ok = kernel.expanduser().is_file()
        return Check(
            "kernel",
            "ok" if ok else "fail",
            f"MVM_KERNEL={kernel}",
            fix="" if ok else "point MVM_KERNEL at a vmlinux or unset it",
        )
    cached = list((cache_dir() / "kernel").glob("*/vmlinux"))
    if cached:
        return Check("kernel", "ok", f"cached: {cached[0]}")
    if list(Path("/usr/src").glob("linux-source-6.1.tar.*")):
        return Check(
            "kernel",
            "ok",
            "linux-source-6.1 present; built on first use "
            "(about 5 minutes, cached) or now with: mvmctl kernel build",
        )
    return Check(
        "kernel",
        "fail",
        "no cached kernel and no linux-source-6.1",
        fix=f"apt-get install linux-source-6.1 ({SETUP_HINT})",
    )


def _state_dir() -> Check:
    home = mvm_home()
    try:
        make_private_dirs(home)
        probe = home / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return Check(
            "state dir",
            "fail",
            f"{home}: {exc.strerror}",
            fix="set MVM_HOME to a writable directory",
        )
    return Check("state dir", "ok", str(home))


def _vhost_vsock() -> Check:
    if os.path.exists("/dev/vhost-vsock"):
        return Check("vhost-vsock", "ok", "/dev/vhost-vsock present", required=False)
    return Check(
        "vhost-vsock",
        "warn",
        "absent: QEMU's agent channel uses virtio-serial",
        fix="modprobe vhost_vsock",
        required=False,
    )


def _nix_builder() -> Check:
    from mvm.engine.builders.auto import probe_host

    probe = probe_host()
    if probe.ok:
        return Check("nix builder", "ok", probe.reason, required=False)
    remote = current_settings().builder_ssh
    if remote:
        return Check(
            "nix builder",
            "ok",
            f"host: {probe.reason}; remote: MVM_BUILDER_SSH={remote}",
            required=False,
        )
    return Check(
        "nix builder",
        "warn",
        f"{probe.reason}; flakes that are plain mkGuest images fall back to the offline builder",
        fix="install Nix with a store, or set MVM_BUILDER_SSH=[user@]host[:port] (+ _KEY)",
        required=False,
    )


CHECKS: tuple[Callable[[], Check], ...] = (
    lambda: Check("python", "ok", sys.version.split()[0]),
    _qemu,
    _kvm,
    _vhost_vsock,
    _busybox,
    lambda: _which("mkfs.ext4", "e2fsprogs", "e2fsprogs"),
    lambda: _which("debugfs", "debugfs", "e2fsprogs"),
    _kernel,
    lambda: _which("make", "kernel toolchain", "build-essential bc bison flex libelf-dev"),
    lambda: (
        _which("musl-gcc", "musl-gcc (agent)", "musl-tools", required=False)
        if not shutil.which("musl-gcc") and shutil.which("gcc")
        else _which("musl-gcc", "musl-gcc (agent)", "musl-tools")
    ),
    lambda: _which("nix", "nix", "nix-bin", required=False),
    _nix_builder,
    lambda: _backend("firecracker"),
    lambda: _backend("cloud-hypervisor"),
    _stub_backend,
    _state_dir,
)


def run_checks() -> list[Check]:
    return [check() for check in CHECKS]
