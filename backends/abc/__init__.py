"""mvm.backends.abc: the protocol every VMM backend implements and the values it takes.

``VmSpec`` in (kernel, drives, network devices, resources, ``Accel``), ``LaunchPlan`` out
(the whole VMM configuration: argv or REST ``ApiCall``s, with the ``LaunchInputs`` checked
before spawn), ``VmmHandle`` while it runs and ``AgentEndpoint`` to reach the guest agent.
Imports nothing else of ours, so both the lifecycle and every backend can name
these types. Other packages use what is exported here.
"""

from mvm.backends.abc.types import (
    Accel,
    AgentEndpoint,
    ApiCall,
    Availability,
    Backend,
    Drive,
    LaunchInputs,
    LaunchPlan,
    NetDevice,
    PausedHook,
    Verity,
    VmmHandle,
    VmSpec,
)
from mvm.backends.abc.verity import dm_create_arg, dm_table, root_args

__all__ = [
    "Accel",
    "AgentEndpoint",
    "ApiCall",
    "Availability",
    "Backend",
    "Drive",
    "LaunchInputs",
    "LaunchPlan",
    "NetDevice",
    "PausedHook",
    "Verity",
    "VmSpec",
    "VmmHandle",
    "dm_create_arg",
    "dm_table",
    "root_args",
]
