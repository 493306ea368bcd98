"""The Firecracker backend (REST over the API socket, hybrid vsock to the agent)."""

from mvm.backends.firecracker.api import FirecrackerApi, FirecrackerApiError, FirecrackerSocketError
from mvm.backends.firecracker.backend import (
    FirecrackerBackend,
    FirecrackerHandle,
    FirecrackerKvmError,
    find_binary,
    kvm_status,
)
from mvm.backends.firecracker.config import (
    ApiCall,
    FcPaths,
    boot_calls,
    config_calls,
    restore_calls,
)
from mvm.backends.firecracker.jailer import JailerConfig, jailer_argv

__all__ = [
    "ApiCall",
    "FcPaths",
    "FirecrackerApi",
    "FirecrackerApiError",
    "FirecrackerBackend",
    "FirecrackerHandle",
    "FirecrackerKvmError",
    "FirecrackerSocketError",
    "JailerConfig",
    "boot_calls",
    "config_calls",
    "find_binary",
    "jailer_argv",
    "kvm_status",
    "restore_calls",
]
