"""PortForward: one ``host:guest`` mapping, proxied over the guest agent.

Each accepted host TCP connection becomes one multiplexed agent stream to
``127.0.0.1:<guest_port>`` inside the guest, so forwarding works rootless and on
every backend (no TAP, no NAT). The listener is bound *before* the VM boots (see
``bind_forward_listener``) so a port already in use fails fast and leaves no VM.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.abc

from mvm.engine.base.errors import ConflictError, MvmError
from mvm.engine.base.log import get_logger
from mvm.engine.request.vmrequest import PortMapping
from mvm.engine.runtime.actor import Actor

if TYPE_CHECKING:
    from mvm.backends.guest.client import AgentClient


class AgentSource(Protocol):
    """Where a forward gets the live agent client (an AgentConnection, or a fixed client)."""

    async def client(self, timeout: float = 30.0) -> AgentClient: ...


log = get_logger("mvm.forward")

_CHUNK = 64 * 1024
CONNECT_RETRY_S = 5.0


async def bind_forward_listener(mapping: PortMapping) -> anyio.abc.Listener[anyio.abc.SocketStream]:
    """Bind the host side of a forward, turning EADDRINUSE into a coded error."""
    try:
        return await anyio.create_tcp_listener(
            local_host=mapping.host_addr, local_port=mapping.host_port, reuse_port=False
        )
    except OSError as exc:
        raise ConflictError(
            f"cannot listen on {mapping.host_addr}:{mapping.host_port}: {exc.strerror or exc}",
            code="E_PORT_IN_USE",
            hint="pick another host port with -p HOST:GUEST or stop what uses it",
        ) from None


async def _pump(src: anyio.abc.ByteStream, dst: anyio.abc.ByteStream) -> bool:
    """Copy one direction until EOF, then half-close the other side. True when it
    ended broken rather than at a clean EOF (e.g. the guest agent restarted)."""
    broken = False
    try:
        while True:
            chunk = await src.receive(_CHUNK)
            await dst.send(chunk)
    except anyio.EndOfStream:
        pass
    except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        broken = True
    with contextlib.suppress(
        anyio.ClosedResourceError, anyio.BrokenResourceError, OSError, NotImplementedError
    ):
        await dst.send_eof()
    return broken


class PortForward(Actor[None]):
    def __init__(
        self,
        vm: str,
        mapping: PortMapping,
        listener: anyio.abc.Listener[anyio.abc.SocketStream],
        agent: AgentSource,
        *,
        owns_listener: bool = True,
    ) -> None:
        super().__init__(f"vm/{vm}/forward/{mapping.host_port}")
        # A VM's listeners belong to its bind_ports step, so that they stay bound (and
        # clients queue in the backlog) while the VM restarts; a standalone forward
        # closes its own.
        self._owns_listener = owns_listener
        self.vm = vm
        self.mapping = mapping
        self._listener = listener
        self._agent = agent
        self.connections_total = 0

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as tg:
            task_status.started()
            log.info("forward.listening", vm=self.vm, mapping=str(self.mapping))
            await self._listener.serve(self._handle, task_group=tg)

    async def _handle(self, conn: anyio.abc.SocketStream) -> None:
        self.connections_total += 1
        async with conn:
            try:
                guest = await self._open_guest()
            except MvmError as exc:
                log.warning(
                    "forward.connect_failed",
                    vm=self.vm,
                    mapping=str(self.mapping),
                    code=exc.code,
                    error=exc.message,
                )
                return
            async with guest, anyio.create_task_group() as tg:
                tg.start_soon(_pump, conn, guest)
                if await _pump(guest, conn):
                    # The guest leg broke (agent restarted, link lost): close the host
                    # connection too instead of leaving the client hanging on it.
                    tg.cancel_scope.cancel()

    async def _open_guest(self) -> anyio.abc.ByteStream:
        """The guest leg, retried while the guest port refuses, for up to
        ``CONNECT_RETRY_S``: "ready" is the agent's hello, and the service behind the
        port (httpd in the demo) starts a moment later; a client that connects right
        after ``up`` waits that moment instead of getting a reset."""
        delay, waited = 0.05, 0.0
        while True:
            client = await self._agent.client()
            try:
                return await client.open_tcp(self.mapping.guest_port)
            except MvmError as exc:
                if exc.code != "E_CONNECT" or waited >= CONNECT_RETRY_S:
                    raise
            await anyio.sleep(delay)  # backoff on a refused port, not a synchronisation
            waited += delay
            delay = min(delay * 2, 0.5)

    async def teardown(self) -> None:
        if self._owns_listener:
            await self._listener.aclose()
        log.info("forward.closed", vm=self.vm, mapping=str(self.mapping))
