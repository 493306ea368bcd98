"""mvm: a microVM manager with an embeddable structured-concurrency engine.

The public API is what this module exports; everything else is private.

Only the errors are imported eagerly. The SDK (``app``, ``function``, ...: the IR
model) and the engine side (``Engine``, ``Image``, ...: the engine, its backends and
actors) resolve on first access (PEP 562), so ``import mvm`` -- done by every entry
file and every ``mvmctl`` command -- loads only what is then used.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from mvm.engine.base.errors import (
    AccessDenied,
    AgentError,
    BackendError,
    BackendUnavailable,
    BuildError,
    ConfigError,
    ConflictError,
    MvmError,
    NotFoundError,
    RequestTimeout,
    StateError,
)

if TYPE_CHECKING:
    from mvm.backends.guest.files import FileEntry, GuestFiles
    from mvm.backends.guest.streams import ExecSession
    from mvm.engine.engine import Engine, VmHandle
    from mvm.engine.images.image import Image
    from mvm.engine.images.imagespec import HealthCheck, ImageSpec, Service, Uids
    from mvm.engine.request.vmrequest import PortMapping, VmRequest
    from mvm.engine.runtime.events import Event
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mvm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this hook
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "AccessDenied",
    "AgentError",
    "BackendError",
    "BackendUnavailable",
    "BuildError",
    "ConfigError",
    "ConflictError",
    "Engine",
    "Event",
    "ExecSession",
    "FileEntry",
    "GuestFiles",
    "HealthCheck",
    "Image",
    "ImageSpec",
    "MvmError",
    "NotFoundError",
    "PortMapping",
    "RequestTimeout",
    "Service",
    "StateError",
    "Uids",
    "VmHandle",
    "VmRequest",
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
