"""One process manager for every VMM (QEMU, Firecracker, Cloud Hypervisor).

Backends keep only what is VMM-specific (argv or REST calls, QMP/API details);
the handle, spawn, wait-ready, stop escalation and kill live here once, with the
checks every VMM shares (inputs, KVM and its test boot). Two modules are imported by
their own path, so that a QEMU process does not load an HTTP client: ``rest`` (the REST
client and ``RestControl`` of Firecracker and Cloud Hypervisor) and ``hybrid_vsock``
(their agent channel).
"""

from mvm.backends.vmm.binary import binary_override, find_program, resolve_binary
from mvm.backends.vmm.configured import start_configured
from mvm.backends.vmm.control import ProcessControl
from mvm.backends.vmm.handle import UNKNOWN_STATUS, VmmProcess, own
from mvm.backends.vmm.inputs import check_inputs, check_plan_inputs, last_line
from mvm.backends.vmm.kvm import (
    NESTED_HINT,
    KvmStatus,
    guests_run_under_kvm,
    host_is_vm,
    kvm_availability,
    kvm_status,
    kvm_unavailable,
    refuse_tcg,
)
from mvm.backends.vmm.kvm_probe import QEMU_BINARY, kvm_verdict
from mvm.backends.vmm.manager import (
    Graceful,
    Probe,
    SpawnOptions,
    VmmKind,
    kill,
    killed_on_failure,
    launch,
    log_started,
    spawn,
    stale_files,
    stop,
    terminate,
    wait,
    wait_ready,
)

__all__ = [
    "NESTED_HINT",
    "QEMU_BINARY",
    "UNKNOWN_STATUS",
    "Graceful",
    "KvmStatus",
    "Probe",
    "ProcessControl",
    "SpawnOptions",
    "VmmKind",
    "VmmProcess",
    "binary_override",
    "check_inputs",
    "check_plan_inputs",
    "find_program",
    "guests_run_under_kvm",
    "host_is_vm",
    "kill",
    "killed_on_failure",
    "kvm_availability",
    "kvm_status",
    "kvm_unavailable",
    "kvm_verdict",
    "last_line",
    "launch",
    "log_started",
    "own",
    "refuse_tcg",
    "resolve_binary",
    "spawn",
    "stale_files",
    "start_configured",
    "stop",
    "terminate",
    "wait",
    "wait_ready",
]
