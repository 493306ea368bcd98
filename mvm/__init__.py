"""mvm: a microVM manager with an embeddable structured-concurrency engine.

The public API is what this module exports; everything else is private.

Only the errors are imported eagerly. The SDK (``app``, ``function``, ...: the IR
model) and the engine side (``Engine``, ``Image``, ...: the engine, its backends and
actors) resolve on first access (PEP 562), so ``import mvm`` -- done by every entry
file and every ``mvmctl`` command -- loads only what is then used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from mvm.engine.base.errors import (
    AccessDenied,
    ActorFailed,
    ActorStopped,
    AgentError,
    AuditTampered,
    BackendError,
    BackendUnavailable,
    BuildError,
    BuildPhaseError,
    ConfigError,
    ConflictError,
    IrError,
    KeyPermissions,
    MessageError,
    MvmError,
    NonceReplay,
    NotFoundError,
    PlanExpired,
    PlanNotYetValid,
    PlanSignatureError,
    RequestTimeout,
    RestartBudgetExhausted,
    SecurityError,
    SettingsError,
    StateError,
)
from mvm.engine.base.lazy import lazy_exports

if TYPE_CHECKING:
    from mvm.backends.guest.client import AgentClient, ExecResult, LogLine
    from mvm.backends.guest.files import FileEntry, GuestFiles
    from mvm.backends.guest.streams import ExecSession
    from mvm.engine.base.settings import Accel, Settings
    from mvm.engine.engine import Engine, VmHandle
    from mvm.engine.images.image import Image
    from mvm.engine.images.imagespec import HealthCheck, ImageSpec, Service, Uids
    from mvm.engine.request.vmrequest import HealthAction, Mode, NetMode, PortMapping, VmRequest
    from mvm.engine.request.volumes import Volume
    from mvm.engine.runtime.events import Event, EventBus, EventKind
    from mvm.engine.store import EventRecord, PortRecord, StateStore, VmRecord
    from mvm.sdk import (
        app,
        command,
        deps,
        emitting,
        function,
        image,
        mount,
        network,
        resources,
        source,
        volume,
        workload,
    )

# Public name -> the module that defines it; imported on first access.
_LAZY = {
    "ExecResult": "mvm.backends.guest.client",
    "LogLine": "mvm.backends.guest.client",
    "AgentClient": "mvm.backends.guest.client",
    "Accel": "mvm.engine.base.settings",
    "Settings": "mvm.engine.base.settings",
    "Volume": "mvm.engine.request.volumes",
    "Mode": "mvm.engine.request.vmrequest",
    "NetMode": "mvm.engine.request.vmrequest",
    "HealthAction": "mvm.engine.request.vmrequest",
    "EventKind": "mvm.engine.runtime.events",
    "EventBus": "mvm.engine.runtime.events",
    "EventRecord": "mvm.engine.store",
    "PortRecord": "mvm.engine.store",
    "StateStore": "mvm.engine.store",
    "VmRecord": "mvm.engine.store",
    "ExecSession": "mvm.backends.guest.streams",
    "FileEntry": "mvm.backends.guest.files",
    "GuestFiles": "mvm.backends.guest.files",
    "Engine": "mvm.engine.engine",
    "VmHandle": "mvm.engine.engine",
    "Image": "mvm.engine.images.image",
    "HealthCheck": "mvm.engine.images.imagespec",
    "ImageSpec": "mvm.engine.images.imagespec",
    "Service": "mvm.engine.images.imagespec",
    "Uids": "mvm.engine.images.imagespec",
    "PortMapping": "mvm.engine.request.vmrequest",
    "VmRequest": "mvm.engine.request.vmrequest",
    "Event": "mvm.engine.runtime.events",
    "app": "mvm.sdk",
    "command": "mvm.sdk",
    "deps": "mvm.sdk",
    "emitting": "mvm.sdk",
    "function": "mvm.sdk",
    "image": "mvm.sdk",
    "mount": "mvm.sdk",
    "network": "mvm.sdk",
    "resources": "mvm.sdk",
    "source": "mvm.sdk",
    "volume": "mvm.sdk",
    "workload": "mvm.sdk",
}


__getattr__ = lazy_exports(__name__, _LAZY, globals())


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Accel",
    "AccessDenied",
    "ActorFailed",
    "ActorStopped",
    "AgentClient",
    "AgentError",
    "AuditTampered",
    "BackendError",
    "BackendUnavailable",
    "BuildError",
    "BuildPhaseError",
    "ConfigError",
    "ConflictError",
    "Engine",
    "Event",
    "EventBus",
    "EventKind",
    "EventRecord",
    "ExecResult",
    "ExecSession",
    "FileEntry",
    "GuestFiles",
    "HealthAction",
    "HealthCheck",
    "Image",
    "ImageSpec",
    "IrError",
    "KeyPermissions",
    "LogLine",
    "MessageError",
    "Mode",
    "MvmError",
    "NetMode",
    "NonceReplay",
    "NotFoundError",
    "PlanExpired",
    "PlanNotYetValid",
    "PlanSignatureError",
    "PortMapping",
    "PortRecord",
    "RequestTimeout",
    "RestartBudgetExhausted",
    "SecurityError",
    "Service",
    "Settings",
    "SettingsError",
    "StateError",
    "StateStore",
    "Uids",
    "VmHandle",
    "VmRecord",
    "VmRequest",
    "Volume",
    "app",
    "command",
    "deps",
    "emitting",
    "function",
    "image",
    "mount",
    "network",
    "resources",
    "source",
    "volume",
    "workload",
]
__version__ = "0.1.0"

if os.environ.get("MVM_EMITTING") == "1":  # = mvm.sdk.emitting(), without importing it
    # An entry file run to emit its IR (MVM_EMITTING=1 python entry.py): emit at exit.
    from mvm.sdk import arm_auto_emit

    arm_auto_emit()
