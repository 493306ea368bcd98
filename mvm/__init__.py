"""mvm: a microVM manager with an embeddable structured-concurrency engine.

The public API is what this module exports; everything else is private.
"""

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

from mvm.sdk import arm_auto_emit as _arm_auto_emit

_arm_auto_emit()
