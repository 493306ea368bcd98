"""Reach a running VM's guest agent from any process, through its engine's mux.

The engine that runs a VM (the detached shim, or an attached ``mvmctl run``)
owns the single agent transport; everyone else goes through the mux socket it
serves in the VM's run directory. The sealed gate is checked here too, so a
sealed image refuses exec/console with a clear error before anything is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from mvm.actors.agent_mux import MUX_SOCKET
from mvm.backends.guest.client import AgentClient
from mvm.engine.base.errors import AccessDenied, AgentError, ConflictError, NotFoundError
from mvm.engine.store import StateStore, VmRecord


async def running_vm(name: str) -> VmRecord:
    async with StateStore.open() as store:
        rec = await store.get_vm(name)
    if rec is None:
        raise NotFoundError(f"no VM named {name!r}", code="E_VM_NOT_FOUND", hint="see `mvmctl ls`")
    if rec.state != "running":
        raise ConflictError(
            f"VM {name!r} is {rec.state}, not running",
            code="E_VM_NOT_RUNNING",
            hint=f"start it again, or read its log: mvmctl logs {name}",
        )
    return rec


def require_accessible(rec: VmRecord, what: str) -> None:
    if rec.sealed:
        raise AccessDenied(
            f"VM {rec.name!r} runs a sealed image: {what} is refused",
            hint="build the image with dev = true (e.g. `mvmctl run demo-dev`)",
        )


@asynccontextmanager
async def open_vm_agent(name: str, *, timeout: float = 10.0) -> AsyncIterator[AgentClient]:
    rec = await running_vm(name)
    socket_path = Path(rec.run_dir) / MUX_SOCKET
    try:
        with anyio.fail_after(timeout):
            stream = await anyio.connect_unix(socket_path)
    except (OSError, TimeoutError):
        raise AgentError(
            f"the engine supervising {name!r} does not answer",
            code="E_AGENT_GONE",
            hint=f"check `mvmctl status {name}`; `mvmctl down {name}` removes it",
        ) from None
    async with AgentClient.connect(stream, hello_timeout=timeout) as client:
        yield client
