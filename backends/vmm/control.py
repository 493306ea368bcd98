"""The process half of the backend protocol, written once: attach, wait, stop.

A backend subclasses ``ProcessControl[ItsHandle]``, names its handle type and
``VmmKind``, and supplies only what is its own: the graceful stop request.
"""

from __future__ import annotations

from typing import Generic

from mvm.backends.abc.types import LaunchPlan, VmmHandle
from mvm.backends.vmm.handle import H, own
from mvm.backends.vmm.manager import Graceful, VmmKind, stop, wait


class ProcessControl(Generic[H]):
    handle_type: type[H]
    kind: VmmKind

    def attach(self, plan: LaunchPlan, pid: int) -> H:
        """A handle on a VMM started earlier by another engine (re-adoption)."""
        return self.handle_type.adopt(plan, pid)

    async def wait(self, handle: VmmHandle) -> int:
        """The VMM's exit status for a child, UNKNOWN_STATUS for an adopted VMM."""
        return await wait(own(handle, self.handle_type))

    async def stop_with(self, handle: VmmHandle, graceful: Graceful | None, grace: float) -> int:
        return await stop(self.kind, own(handle, self.handle_type), graceful, grace=grace)
