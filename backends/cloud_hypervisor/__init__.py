"""The Cloud Hypervisor backend (REST over ``--api-socket``, hybrid vsock to the agent)."""

from mvm.backends.cloud_hypervisor.api import ChApi, ChApiError, ChSocketError
from mvm.backends.cloud_hypervisor.backend import ChHandle, CloudHypervisorBackend, find_binary
from mvm.backends.cloud_hypervisor.config import ChPaths, cmdline, vm_config

__all__ = [
    "ChApi",
    "ChApiError",
    "ChHandle",
    "ChPaths",
    "ChSocketError",
    "CloudHypervisorBackend",
    "cmdline",
    "find_binary",
    "vm_config",
]
