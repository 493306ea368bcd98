"""What the fleet's actors and its client pass each other: plain frozen records.

Kept free of Ray so they pickle the same in every worker, and so a failure inside an
actor travels as data (``Outcome``): Ray would wrap an ``MvmError`` in its own task
error, and the caller is owed the one coded line, not a remote traceback.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from mvm.engine.base import errors
from mvm.engine.base.error_codes import lookup
from mvm.engine.base.errors import MvmError

Strategy = Literal["spread", "pack"]
Restart = Literal["never", "on-node-loss"]
STRATEGIES: tuple[str, ...] = ("spread", "pack")
RESTARTS: tuple[str, ...] = ("never", "on-node-loss")

# The fleet-wide states of a VM (the node's engine has its own, finer ones).
FleetState = Literal["placing", "running", "lost", "stopped"]


@attrs.frozen
class Placement:
    """How a VM is placed: the resources it reserves and where it may go."""

    vcpus: int
    memory_mib: int
    strategy: Strategy = "spread"
    labels: tuple[tuple[str, str], ...] = ()
    restart: Restart = "never"


@attrs.frozen
class FleetEntry:
    """The registry's truth about one VM name (``generation`` grows on every restart)."""

    name: str
    request_json: str
    placement: Placement
    generation: int = 1
    node_id: str | None = None
    node_address: str | None = None
    state: FleetState = "placing"
    reason: str | None = None


@attrs.frozen
class FleetVmInfo:
    """One VM as ``Fleet.list`` shows it: the registry's entry joined with its node's row
    (``vm_state`` is the node engine's state; None when the node did not answer)."""

    name: str
    node_id: str | None
    node_address: str | None
    state: FleetState
    generation: int
    reason: str | None = None
    vm_state: str | None = None
    pid: int | None = None
    backend: str | None = None
    ports: tuple[str, ...] = ()  # "node-address:port->guest"


@attrs.frozen
class FleetNode:
    """An mvm host of the Ray cluster (a node that advertises the ``mvm_host`` resource)."""

    node_id: str
    address: str
    alive: bool
    vcpus: int
    memory_mib: int
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def home(self) -> str | None:
        return dict(self.labels).get("mvm.home")


@attrs.frozen
class FleetEvent:
    """One event of a node's engine, with the node it came from."""

    node_id: str
    id: int
    ts: float
    kind: str
    vm: str | None
    data: dict[str, Any]


@attrs.frozen
class Outcome:
    """An actor call's result or its coded failure (re-raised by ``unwrap``)."""

    value: Any = None
    code: str | None = None
    message: str = ""
    hint: str | None = None


def failed(exc: MvmError) -> Outcome:
    return Outcome(code=exc.code, message=exc.message, hint=exc.hint)


def unwrap(outcome: Outcome) -> Any:
    """The value, or the failure raised as the class its code is registered with."""
    if outcome.code is None:
        return outcome.value
    info = lookup(outcome.code)
    cls = getattr(errors, info.cls, MvmError) if info is not None else MvmError
    if not (isinstance(cls, type) and issubclass(cls, MvmError)):
        cls = MvmError
    raise cls(outcome.message, code=outcome.code, hint=outcome.hint)
