"""Checks and diagnostics every VMM backend shares: inputs that must exist, last log line."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from mvm.backends.abc.types import Drive, LaunchInputs
from mvm.engine.base.errors import ConfigError


def check_inputs(
    kernel: Path | None,
    rootfs: Path | None,
    incoming: Path | None,
    drives: Iterable[Drive] = (),
) -> None:
    """Missing inputs fail here with a coded one-liner, before anything is spawned."""
    if kernel is not None and not kernel.is_file():
        raise ConfigError(
            f"kernel {kernel} does not exist",
            code="E_KERNEL_MISSING",
            hint="rebuild the image (mvmctl build) or set MVM_KERNEL",
        )
    if rootfs is not None and not rootfs.is_file():
        raise ConfigError(
            f"root filesystem {rootfs} does not exist",
            code="E_ROOTFS_MISSING",
            hint="rebuild the image (mvmctl build)",
        )
    if incoming is not None and not incoming.is_file():
        raise ConfigError(f"snapshot {incoming} does not exist", code="E_SNAPSHOT_MISSING")
    for drive in drives:
        if not drive.path.exists():
            raise ConfigError(f"drive {drive.path} does not exist", code="E_DRIVE_MISSING")


def check_plan_inputs(inputs: LaunchInputs) -> None:
    check_inputs(inputs.kernel, inputs.rootfs, inputs.snapshot)


def last_line(path: Path) -> str:
    """The last non-blank line of a VMM's log: usually the reason it died."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""
