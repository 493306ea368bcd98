"""mvm.engine.request: what a user asks for, validated into frozen values before anything starts.

``VmRequest`` (name, image, resources, ports, volumes, network, health action) with its
checks, ``PortMapping``, ``Volume`` (named, host-path and persistent volumes and the disks
made for them) and ``mvm.toml`` (``MvmToml``, parsed and checked reporting every problem).
Other packages use what is exported here.
"""

from mvm.engine.request.mvmtoml import MvmToml, check_mvm_toml, load_mvm_toml
from mvm.engine.request.vmrequest import (
    Mode,
    NetMode,
    PortMapping,
    VmRequest,
    check_resources,
    check_vm_name,
)
from mvm.engine.request.volumes import Volume, kernel_arg, prepare_volume, volume_disk

__all__ = [
    "Mode",
    "MvmToml",
    "NetMode",
    "PortMapping",
    "VmRequest",
    "Volume",
    "check_mvm_toml",
    "check_resources",
    "check_vm_name",
    "kernel_arg",
    "load_mvm_toml",
    "prepare_volume",
    "volume_disk",
]
