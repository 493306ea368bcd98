"""What a RuntimeVM's inbox takes, and the small values its life needs.

StopVm is the one stop path's message (Engine.stop, the shim's SIGTERM, Ctrl-C of an
attached run); DetachVm hands the running VM to another supervisor; RestartVm is
``--health-action restart-vm``, bounded by a RestartBudget.
"""

from __future__ import annotations

import time

import anyio.abc
import attrs

from mvm.backends.abc.types import AgentEndpoint
from mvm.engine.base.errors import MvmError, error_leaves


@attrs.frozen
class StopVm:
    """Ask the VM to shut down (the actor then ends and tears down)."""

    reason: str = "stopped"


@attrs.frozen
class RestartVm:
    """Stop the VM and boot it again under the same name, ports, disks and lease."""

    reason: str = "requested"


@attrs.define
class RestartBudget:
    """At most ``max_restarts`` within ``window_s``: a VM that keeps turning unhealthy
    is stopped (with that reason) instead of being restarted forever."""

    max_restarts: int = 3
    window_s: float = 300.0
    _times: list[float] = attrs.field(factory=list)

    def allow(self) -> bool:
        now = time.monotonic()
        self._times = [t for t in self._times if now - t < self.window_s]
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True

    @property
    def spent(self) -> str:
        return f"restart budget spent ({self.max_restarts} in {self.window_s:.0f} s)"


@attrs.frozen
class DetachVm:
    """Let go of the VM without stopping it, so that another engine can adopt it."""


def first_error(exc: BaseException) -> BaseException:
    """The first MvmError inside task-group wrapping, else the exception itself."""
    leaves = error_leaves(exc)
    return next((e for e in leaves if isinstance(e, MvmError)), leaves[0] if leaves else exc)


class RegreetEndpoint:
    """Dials like ``inner``; the re-greet itself is AgentClient.connect's.

    A restored guest may believe its source's host is still attached (the
    virtio-serial port was open when the snapshot was taken), so it would never say
    hello on its own. The client sends a host ``hello`` on every dial, which makes the
    agent drop that stale session and greet now."""

    def __init__(self, inner: AgentEndpoint) -> None:
        self._inner = inner

    async def connect(self) -> anyio.abc.ByteStream:
        return await self._inner.connect()
