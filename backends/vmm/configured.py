"""Start a VMM that is configured over its API after it is up (Firecracker, Cloud Hypervisor).

Such a VMM is spawned empty; the VM exists only once ``plan.api_calls`` (create + boot,
or restore + resume) have been sent in order. Spawned and configured is one step for
the caller: if any call fails or the caller is cancelled, the VMM is killed and its run
files removed before the error leaves, exactly as when it never became ready.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from mvm.backends.abc.types import ApiCall, LaunchPlan
from mvm.backends.vmm.handle import H
from mvm.backends.vmm.manager import VmmKind, killed_on_failure, log_started
from mvm.engine.base.errors import BackendError


async def start_configured(
    kind: VmmKind,
    plan: LaunchPlan,
    *,
    backend: str,
    plan_code: str,
    spawn: Callable[[LaunchPlan], Awaitable[H]],
    configure: Callable[[H, tuple[ApiCall, ...]], Awaitable[None]],
    restore_path: str,
    detached: bool,
) -> H:
    """``spawn(plan)``, then ``configure(handle, plan.api_calls)``; returns once the VM runs.

    A plan that another backend prepared (or that carries no calls) is refused with
    ``plan_code`` before anything is spawned; ``restore_path`` is the call that marks a
    restore in the ``started`` event."""
    calls = plan.api_calls
    if plan.backend != backend or not calls:
        raise BackendError(
            f"this launch plan was not prepared by the {kind.label} backend "
            f"(it carries no {kind.label} API calls)",
            code=plan_code,
            hint="start the plan with the backend that prepared it",
        )
    t0 = time.monotonic()
    handle = await spawn(plan)
    async with killed_on_failure(kind, handle):
        await configure(handle, calls)
    restored = any(call.path == restore_path for call in calls)
    log_started(kind, handle, t0, detached=detached, restored=restored)
    return handle
