"""``--hypervisor NAME``: the runtime backend a boot uses, or why this host cannot.

``auto`` (the default) is the best available one: Firecracker where KVM runs guests,
else QEMU (TCG when KVM does not work). A named hypervisor that this host cannot run
is refused with one coded line naming what is missing (macOS for Apple
Virtualization, KVM that runs guests for Firecracker, a binary, ...), reusing the
backends' own availability checks.
"""

from __future__ import annotations

import ctypes.util
import sys

from mvm.backends.registry import backend_names, get_backend
from mvm.engine.base.errors import ConfigError

# The seeds' runtime backends that have no implementation on this platform.
MACOS_ONLY = {"apple-container": "Apple Virtualization.framework", "vz": "Apple Virtualization"}
KNOWN = ("auto", "firecracker", "qemu", "cloud-hypervisor", "apple-container", "libkrun")


def _unavailable(name: str, why: str, hint: str | None = None) -> ConfigError:
    return ConfigError(
        f"hypervisor {name} is unavailable here: {why}",
        code="E_HYPERVISOR_UNAVAILABLE",
        hint=hint or "omit --hypervisor to use the best available one (see mvmctl doctor)",
    )


def _firecracker_problem() -> str | None:
    # KVM first, from the VMM layer: the Firecracker backend (and httpx, ~80 ms of every
    # `up`) is imported only where KVM could run it
    from mvm.backends.vmm.kvm import guests_run_under_kvm, kvm_status

    kvm = kvm_status()
    if not kvm.usable:
        return f"firecracker needs KVM: {kvm.reason}"
    if kvm.nested and not guests_run_under_kvm():
        return (
            "firecracker needs KVM that runs guests; this host's /dev/kvm failed a test "
            "boot (nested virtualization), so only QEMU with TCG works here"
        )
    availability = get_backend("firecracker").availability()
    return None if availability.ok else str(availability.reason)


def resolve_hypervisor(name: str) -> str:
    """The backend name to boot with; raises when ``name`` cannot run here."""
    if name == "auto":
        return "firecracker" if _firecracker_problem() is None else "qemu"
    if name in MACOS_ONLY:
        if sys.platform != "darwin":
            raise _unavailable(
                name,
                f"it needs {MACOS_ONLY[name]}, i.e. macOS (this host is {sys.platform})",
            )
        raise _unavailable(name, "this build has no Apple Virtualization backend")
    if name == "libkrun":
        lib = ctypes.util.find_library("krun")
        why = "libkrun (libkrun.so) is not installed" if lib is None else "no libkrun backend"
        raise _unavailable(name, f"{why}; libkrun also needs KVM that runs guests")
    if name == "firecracker":
        problem = _firecracker_problem()
        if problem:
            raise _unavailable(name, problem)
        return name
    if name not in backend_names():
        raise ConfigError(
            f"unknown hypervisor {name!r}",
            code="E_HYPERVISOR_NAME",
            hint="one of: " + ", ".join(sorted(set(KNOWN) | set(backend_names()))),
        )
    backend = get_backend(name)
    availability = getattr(backend, "availability", None)
    if availability is not None:
        verdict = availability()
        if not verdict.ok:
            raise _unavailable(name, str(verdict.reason))
    return name
