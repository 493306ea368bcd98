"""mvm.fleet: run mvm across the hosts of a Ray cluster (the ``fleet`` extra installs Ray).

One host-agent actor per node hosts that node's Engine; placement uses Ray resources
(``mvm_host``, ``mvm_vcpus``, ``mvm_memory_mib``) and node labels; a detached registry
actor keeps names unique fleet-wide and restarts the VMs of a lost node elsewhere.
``import mvm`` does not import this package (nor Ray).
"""

from __future__ import annotations

try:
    import ray as _ray  # noqa: F401
except ImportError as exc:  # pragma: no cover - the extra is not installed
    from mvm.engine.base.errors import BackendUnavailable

    raise BackendUnavailable(
        "mvm.fleet needs Ray, which is not installed", code="E_FLEET_NOT_INSTALLED"
    ) from exc

from mvm.fleet.client import Fleet, FleetVm
from mvm.fleet.records import FleetEntry, FleetEvent, FleetNode, FleetVmInfo, Placement

__all__ = [
    "Fleet",
    "FleetEntry",
    "FleetEvent",
    "FleetNode",
    "FleetVm",
    "FleetVmInfo",
    "Placement",
]
