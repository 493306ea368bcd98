"""The QEMU backend (``-M microvm``, virtio-mmio; KVM when it works, TCG otherwise)."""

from mvm.backends.qemu.accel import host_tsc_khz, resolve_accel
from mvm.backends.qemu.backend import QemuBackend, QemuHandle
from mvm.backends.qemu.qmp import QmpClient

__all__ = ["QemuBackend", "QemuHandle", "QmpClient", "host_tsc_khz", "resolve_accel"]
