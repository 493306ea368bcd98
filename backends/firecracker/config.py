"""VmSpec -> the ordered Firecracker API calls that configure and boot it (pure).

The order is upstream mvm's: logger, boot-source, machine-config, drives (root
first), network-interfaces, vsock, metrics, then ``InstanceStart``. A restore
replaces everything between logger/metrics and the start with one
``snapshot/load`` that resumes the VM.

Firecracker runs with its run directory as working directory and the vsock
socket is given *relative* (``vsock.sock``). Firecracker stores that path in a
snapshot verbatim, so a snapshot loaded by a VMM in another run directory binds
its own socket instead of colliding with the original VM's (which is still
running, for a clone).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs

from mvm.backends.abc.types import ApiCall as ApiCall  # re-exported: defined once for every VMM
from mvm.backends.abc.types import VmSpec
from mvm.backends.abc.verity import root_args
from mvm.backends.guest.protocol import AGENT_VSOCK_PORT
from mvm.engine.base.errors import ConfigError

GUEST_CID = 3
ROOT_DRIVE_ID = "rootfs"
VSOCK_NAME = "vsock.sock"
MAX_VCPUS = 32
BASE_BOOT_ARGS = (
    "console=ttyS0",
    "reboot=k",
    "panic=1",
    "pci=off",
    "init=/init",
    "rootfstype=ext4",
)
_ID_OK = re.compile(r"[A-Za-z0-9_]{1,64}")


@attrs.frozen
class FcPaths:
    """Files of one Firecracker VM; sockets and the pid file carry transient suffixes."""

    run_dir: Path

    @property
    def api(self) -> Path:
        return self.run_dir / "fc.sock"

    @property
    def vsock(self) -> Path:
        return self.run_dir / VSOCK_NAME

    @property
    def console(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def log(self) -> Path:
        return self.run_dir / "firecracker.log"

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.log"

    @property
    def pid(self) -> Path:
        return self.run_dir / "firecracker.pid"


def snapshot_files(path: Path) -> tuple[Path, Path]:
    """A snapshot is two files: the VM state at ``path`` and guest memory at ``path.mem``."""
    return path, path.with_name(path.name + ".mem")


def boot_args(spec: VmSpec) -> str:
    """Firecracker itself appends ``root=/dev/vda rw|ro`` for a root drive; a verified
    root is no Firecracker root drive, so its ``root=/dev/dm-0 ro`` is given here."""
    verity = (*root_args(spec.verity), "ro") if spec.verity is not None else ()
    return " ".join(
        (*BASE_BOOT_ARGS, *verity, f"mvm.agent=vsock:{AGENT_VSOCK_PORT}", *spec.kernel_args)
    )


def drive_id(ident: str, index: int) -> str:
    """Firecracker accepts only ``[A-Za-z0-9_]{1,64}`` ids; volume slugs may contain '-'."""
    if not ident:
        return f"drive{index}"
    return re.sub(r"[^A-Za-z0-9_]", "_", ident)[:64]


def _drive_calls(spec: VmSpec) -> list[ApiCall]:
    calls = [
        ApiCall(
            "PUT",
            f"/drives/{ROOT_DRIVE_ID}",
            {
                "drive_id": ROOT_DRIVE_ID,
                "path_on_host": str(spec.rootfs),
                # a verified root is mounted from the dm mapping, not from vda itself
                "is_root_device": spec.verity is None,
                "is_read_only": spec.rootfs_read_only,
            },
        )
    ]
    seen = {ROOT_DRIVE_ID: str(spec.rootfs)}
    for index, drive in enumerate(spec.drives, start=1):
        ident = drive_id(drive.ident, index)
        if ident in seen:
            # A second PUT with the same id silently *replaces* the first drive in
            # Firecracker, so a clash must be caught here or a volume vanishes.
            raise ConfigError(
                f"drive id {ident!r} of {drive.path} clashes with {seen[ident]}",
                code="E_FC_DRIVE_ID",
                hint="give each volume a distinct name ('rootfs' is reserved)",
            )
        if not _ID_OK.fullmatch(ident):
            raise ConfigError(f"invalid Firecracker drive id {ident!r}", code="E_FC_DRIVE_ID")
        seen[ident] = str(drive.path)
        calls.append(
            ApiCall(
                "PUT",
                f"/drives/{ident}",
                {
                    "drive_id": ident,
                    "path_on_host": str(drive.path),
                    "is_root_device": False,
                    "is_read_only": drive.read_only,
                },
            )
        )
    return calls


def _observability_calls(paths: FcPaths) -> tuple[ApiCall, ApiCall]:
    logger = ApiCall(
        "PUT",
        "/logger",
        {"log_path": str(paths.log), "level": "Info", "show_level": True, "show_log_origin": False},
    )
    metrics = ApiCall("PUT", "/metrics", {"metrics_path": str(paths.metrics)})
    return logger, metrics


def boot_calls(spec: VmSpec) -> list[ApiCall]:
    """The full cold-boot sequence, InstanceStart last."""
    if not 1 <= spec.vcpus <= MAX_VCPUS:
        raise ConfigError(
            f"Firecracker supports 1 to {MAX_VCPUS} vCPUs, not {spec.vcpus}", code="E_FC_VCPUS"
        )
    if spec.memory_mib < 16:
        raise ConfigError(f"{spec.memory_mib} MiB of memory is too little", code="E_FC_MEMORY")
    paths = FcPaths(spec.run_dir)
    logger, metrics = _observability_calls(paths)
    calls = [
        logger,
        ApiCall(
            "PUT",
            "/boot-source",
            {"kernel_image_path": str(spec.kernel), "boot_args": boot_args(spec)},
        ),
        ApiCall(
            "PUT",
            "/machine-config",
            {"vcpu_count": spec.vcpus, "mem_size_mib": spec.memory_mib, "smt": False},
        ),
        *_drive_calls(spec),
    ]
    for index, dev in enumerate(spec.net):
        iface = f"eth{index}"
        calls.append(
            ApiCall(
                "PUT",
                f"/network-interfaces/{iface}",
                {"iface_id": iface, "host_dev_name": dev.tap, "guest_mac": dev.mac},
            )
        )
    calls.append(ApiCall("PUT", "/vsock", {"guest_cid": GUEST_CID, "uds_path": VSOCK_NAME}))
    calls.append(metrics)
    calls.append(ApiCall("PUT", "/actions", {"action_type": "InstanceStart"}))
    return calls


def restore_calls(spec: VmSpec, snapshot: Path) -> list[ApiCall]:
    """Load ``snapshot`` and resume; the clone's TAP devices replace the snapshotted ones."""
    state, memory = snapshot_files(snapshot)
    logger, metrics = _observability_calls(FcPaths(spec.run_dir))
    load: dict[str, Any] = {
        "snapshot_path": str(state),
        "mem_backend": {"backend_type": "File", "backend_path": str(memory)},
        "resume_vm": True,
    }
    if spec.net:
        load["network_overrides"] = [
            {"iface_id": f"eth{index}", "host_dev_name": dev.tap}
            for index, dev in enumerate(spec.net)
        ]
    return [logger, metrics, ApiCall("PUT", "/snapshot/load", load)]


def config_calls(spec: VmSpec) -> list[ApiCall]:
    return restore_calls(spec, spec.incoming) if spec.incoming else boot_calls(spec)
