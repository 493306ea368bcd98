"""mvm: a microVM manager with an embeddable structured-concurrency engine.

The public API is what this module exports; everything else is private.

The SDK (``app``, ``function``, ...) and the errors are imported eagerly: an entry file
does ``import mvm`` and must stay cheap. The engine side (``Engine``, ``Image``, ...)
is resolved on first access (PEP 562), so ``import mvm`` -- and every ``mvmctl``
command, which imports it -- does not load the engine, its backends and actors.
"""

from __future__ import annotations

import importlib
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

if TYPE_CHECKING:
    from mvm.engine.engine import Engine, VmHandle
    from mvm.engine.images.image import Image
    from mvm.engine.images.imagespec import HealthCheck, ImageSpec, Service, Uids
    from mvm.engine.request.vmrequest import PortMapping, VmRequest
    from mvm.engine.runtime.events import Event

# Public name -> the module that defines it; imported on first access.
_LAZY = {
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

from mvm.sdk import arm_auto_emit as _arm_auto_emit  # noqa: E402

_arm_auto_emit()
