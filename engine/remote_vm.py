"""A handle on a VM that another process supervises (its shim, another engine).

``Engine.vm(name)`` answers one for any VM in the store that this engine does not run:
exec goes through the agent mux socket the owner serves (engine/vm/agent_access.py),
``wait`` follows the VM's row (and its ``vm.removed`` tombstone), and ``stop`` is the one
stop path from outside the owner (engine/vm/detached.py ``stop_vm``: ask the owner, then
settle). Nothing is cached: each call reads the store, so the handle stays valid across
the VM's restarts and reports a VM that went away as ``E_VM_NOT_FOUND``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anyio

from mvm.backends.guest.client import AgentClient, ExecResult
from mvm.engine.base.errors import ConflictError, NotFoundError
from mvm.engine.base.settings import Settings, use_settings
from mvm.engine.engine import VmHandle
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm.agent_access import open_vm_agent, require_accessible, running_vm
from mvm.engine.vm.detached import stop_vm
from mvm.engine.vm.reconcile import FINAL_STATES

POLL_S = 0.25


class RemoteVmHandle(VmHandle):
    """A VM in the store supervised by another process: exec, wait, stop."""

    def __init__(self, name: str, settings: Settings) -> None:
        self._name = name
        self._settings = settings

    @property
    def name(self) -> str:
        return self._name

    @property
    def hello(self) -> dict[str, Any]:
        """Empty: the agent's hello went to the supervising process."""
        return {}

    @property
    def boot_seconds(self) -> float | None:
        return None

    @property
    def step_seconds(self) -> dict[str, float]:
        return {}

    @property
    def console_log(self) -> str | None:
        return None

    @property
    def pid(self) -> int | None:
        return None

    @property
    def detached(self) -> bool:
        """Always True: this engine does not supervise the VM."""
        return True

    async def record(self) -> VmRecord:
        """The VM's row now; ``E_VM_NOT_FOUND`` when it is not in the store."""
        with use_settings(self._settings):
            async with StateStore.open() as store:
                rec = await store.get_vm(self._name)
        if rec is None:
            raise NotFoundError(f"no VM named {self._name!r}", code="E_VM_NOT_FOUND")
        return rec

    async def agent(self) -> AgentClient:
        raise ConflictError(
            f"VM {self._name!r} is supervised by another process: its agent link is not here",
            code="E_VM_REMOTE",
            hint="use exec on the handle (it goes through the owner's agent mux)",
        )

    async def exec(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        """Run ``argv`` in the guest through the owner's agent mux (sealed: refused)."""
        with use_settings(self._settings):
            require_accessible(await running_vm(self._name), "exec")
            async with open_vm_agent(self._name) as client:
                return await client.exec(list(argv), stdin=stdin, timeout=timeout, env=env, cwd=cwd)

    async def wait(self) -> int | None:
        """Block until the VM ends (its row final, or removed: then its tombstone)."""
        with use_settings(self._settings):
            async with StateStore.open() as store:
                seen = await store.get_vm(self._name)
                if seen is None:
                    raise NotFoundError(f"no VM named {self._name!r}", code="E_VM_NOT_FOUND")
                while True:
                    rec = await store.get_vm(self._name)
                    if rec is None or rec.created_at != seen.created_at:
                        tomb = await store.last_removal(seen.name, seen.created_at)
                        code = tomb.data.get("exit_code") if tomb is not None else None
                        return code if isinstance(code, int) else None
                    if rec.state in FINAL_STATES:
                        return rec.exit_code
                    await anyio.sleep(POLL_S)

    async def detach(self) -> None:
        """Nothing to do: the VM is not supervised here."""

    async def stop(self, reason: str = "stopped") -> int | None:
        """Stop the VM through its owner (``mvmctl stop``'s path); its exit status."""
        with use_settings(self._settings):
            async with StateStore.open() as store:
                rec = await store.get_vm(self._name)
                if rec is None:
                    raise NotFoundError(f"no VM named {self._name!r}", code="E_VM_NOT_FOUND")
                if rec.state in FINAL_STATES:
                    return rec.exit_code
                final = await stop_vm(store, rec)
        return final.exit_code
