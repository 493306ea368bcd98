"""VmSpec -> Cloud Hypervisor's ``vm.create`` payload (pure).

Unlike Firecracker, Cloud Hypervisor takes the whole VM in one ``VmConfig``
document and does not add ``root=`` to the command line itself. The guest
serial console goes to ``console.log`` (``serial.mode = File``); the agent is
reached through the same hybrid vsock protocol as Firecracker's, on
``vsock.sock`` in the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from mvm.backends.abc.types import VmSpec
from mvm.backends.abc.verity import root_args
from mvm.backends.guest.protocol import AGENT_VSOCK_PORT
from mvm.engine.base.errors import ConfigError

GUEST_CID = 3
MAX_VCPUS = 254
BASE_CMDLINE = ("console=ttyS0", "reboot=k", "panic=1", "init=/init")


@attrs.frozen
class ChPaths:
    """Files of one Cloud Hypervisor VM; sockets and pid file carry transient suffixes."""

    run_dir: Path

    @property
    def api(self) -> Path:
        return self.run_dir / "ch.sock"

    @property
    def vsock(self) -> Path:
        return self.run_dir / "vsock.sock"

    @property
    def console(self) -> Path:
        return self.run_dir / "console.log"

    @property
    def log(self) -> Path:
        return self.run_dir / "cloud-hypervisor.log"

    @property
    def pid(self) -> Path:
        return self.run_dir / "cloud-hypervisor.pid"


def cmdline(spec: VmSpec) -> str:
    return " ".join(
        (
            *BASE_CMDLINE,
            *root_args(spec.verity),
            "ro" if spec.rootfs_read_only else "rw",
            "rootfstype=ext4",
            f"mvm.agent=vsock:{AGENT_VSOCK_PORT}",
            *spec.kernel_args,
        )
    )


def vm_config(spec: VmSpec) -> dict[str, Any]:
    """The ``PUT /api/v1/vm.create`` body: disks in attach order (vda = rootfs)."""
    if not 1 <= spec.vcpus <= MAX_VCPUS:
        raise ConfigError(
            f"Cloud Hypervisor supports 1 to {MAX_VCPUS} vCPUs, not {spec.vcpus}",
            code="E_CH_VCPUS",
        )
    paths = ChPaths(spec.run_dir)
    disks: list[dict[str, Any]] = [{"path": str(spec.rootfs), "readonly": spec.rootfs_read_only}]
    disks += [{"path": str(d.path), "readonly": d.read_only} for d in spec.drives]
    config: dict[str, Any] = {
        "cpus": {"boot_vcpus": spec.vcpus, "max_vcpus": spec.vcpus},
        "memory": {"size": spec.memory_mib * 1024 * 1024},
        "payload": {"kernel": str(spec.kernel), "cmdline": cmdline(spec)},
        "disks": disks,
        "vsock": {"cid": GUEST_CID, "socket": str(paths.vsock)},
        "serial": {"mode": "File", "file": str(paths.console)},
        "console": {"mode": "Off"},
        "rng": {"src": "/dev/urandom"},
    }
    if spec.net:
        config["net"] = [{"tap": dev.tap, "mac": dev.mac} for dev in spec.net]
    return config


def snapshot_url(path: Path) -> str:
    """Cloud Hypervisor snapshots into (and restores from) a directory given as a URL."""
    return path.absolute().as_uri()
