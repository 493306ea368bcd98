"""mvm.engine.store: the one SQLite database under $MVM_HOME (VMs, ports, builds, events).

Other packages use what is exported here; the modules behind it are private.
"""

from mvm.engine.store.records import (
    BUILD_STATUSES,
    VM_COLUMNS,
    VM_MODES,
    VM_STATES,
    BuildRecord,
    EventRecord,
    PortRecord,
    VmRecord,
)
from mvm.engine.store.state import StateStore, Transaction

__all__ = [
    "BUILD_STATUSES",
    "VM_COLUMNS",
    "VM_MODES",
    "VM_STATES",
    "BuildRecord",
    "EventRecord",
    "PortRecord",
    "StateStore",
    "Transaction",
    "VmRecord",
]
