"""Is KVM usable here, and does it run guests? Shared by the KVM-only VMMs.

Firecracker and Cloud Hypervisor need ``/dev/kvm``; on a host that is itself a
VM (nested virtualization) the ioctls may answer while a guest never gets past
early boot, so the KVM test boot (``kvm_probe``) decides (``guests_run_under_kvm``).
"""

from __future__ import annotations

import fcntl
import functools
import os
import re
import shutil
from pathlib import Path

import attrs

from mvm.backends.abc.types import Accel, Availability
from mvm.backends.vmm.kvm_probe import QEMU_BINARY, kvm_verdict
from mvm.engine.base.errors import ConfigError

_KVM_GET_API_VERSION = 0xAE00
_KVM_API_VERSION = 12


@attrs.frozen
class KvmStatus:
    usable: bool
    nested: bool
    reason: str


def host_is_vm(cpuinfo: str) -> bool:
    """The CPUID hypervisor bit: KVM here is nested, so guests run without full speed."""
    return bool(re.search(r"^flags\s*:.*\bhypervisor\b", cpuinfo, re.MULTILINE))


@functools.cache
def kvm_status(device: str = "/dev/kvm") -> KvmStatus:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return KvmStatus(False, False, f"{device} is not usable: {exc.strerror or exc}")
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
    except OSError as exc:
        return KvmStatus(False, False, f"{device} rejects KVM_GET_API_VERSION: {exc.strerror}")
    finally:
        os.close(fd)
    if version != _KVM_API_VERSION:
        return KvmStatus(False, False, f"{device} speaks KVM API {version}, not 12")
    try:
        nested = host_is_vm(Path("/proc/cpuinfo").read_text())
    except OSError:
        nested = False
    if nested:
        return KvmStatus(
            True,
            True,
            f"{device} works but this host is itself a VM (nested KVM): "
            "guests boot and run much slower than on bare metal",
        )
    return KvmStatus(True, False, f"{device} usable")


NESTED_HINT = (
    "this host is a VM whose nested KVM failed a test boot (see `mvmctl doctor`); "
    "use the qemu backend, which falls back to TCG"
)


def guests_run_under_kvm() -> bool:
    """Whether a real (tiny) guest boots under KVM here: the KVM test boot's verdict.

    /dev/kvm answering ioctls is not enough on nested hosts, where a guest may never
    get past early boot. The verdict is cached per host boot; without QEMU installed
    there is nothing to probe with, so KVM is given the benefit of the doubt."""
    if shutil.which(QEMU_BINARY) is None:
        return True
    works, _ = kvm_verdict()
    return works


def kvm_unavailable(label: str, kvm: KvmStatus) -> str | None:
    """Why ``label`` (a KVM-only VMM) cannot run guests here, or None if it can."""
    if not kvm.usable:
        return f"{label} needs KVM: {kvm.reason}"
    if kvm.nested and not guests_run_under_kvm():
        return f"{label} needs KVM that runs guests: {NESTED_HINT}"
    return None


def kvm_availability(label: str, binary: Path, kvm: KvmStatus) -> Availability:
    """A KVM-only VMM's availability once its binary is found: KVM decides."""
    why_not = kvm_unavailable(label, kvm)
    if why_not is not None:
        return Availability(False, why_not)
    return Availability(True, f"{binary}; {kvm.reason}")


def refuse_tcg(label: str, accel: Accel, *, code: str) -> None:
    """A KVM-only VMM cannot honour a request for TCG: say so, and who can."""
    if accel is Accel.TCG:
        raise ConfigError(
            f"{label} runs only with KVM; TCG was requested",
            code=code,
            hint="use the qemu backend for TCG",
        )
