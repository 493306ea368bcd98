"""AgentMux: lets other processes reach a VM's guest agent through its engine.

The agent transport admits one host connection (a virtio-serial port is a single
pipe) and the VM's engine holds it. ``mvmctl exec/console/logs/forward`` from
another process dial ``<run_dir>/agent.mux.sock`` instead: the mux greets with
the VM's hello and relays each request on a fresh id of the engine's connection,
rewriting ids both ways. One request is the mux's own: ``mvm.detach`` asks the
engine to let go of the VM (``mvmctl detach``). Acks pass through untouched,
so flow control stays end to end and the mux never buffers more than one
window per stream.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from mvm.backends.guest.channel import Channel
from mvm.backends.guest.protocol import FrameReader, ProtocolError, encode_frame
from mvm.engine.base.errors import AgentError, MvmError
from mvm.engine.base.log import get_logger
from mvm.engine.runtime.actor import Actor

if TYPE_CHECKING:
    from mvm.actors.agent_connection import AgentConnection

log = get_logger("mvm.agent.mux")

MUX_SOCKET = "agent.mux.sock"
DETACH_REQUEST = "mvm.detach"  # mux-level extension: hand the VM over to a detached shim
# Requests answered by exactly one frame; others end with these frame types.
_SINGLE_REPLY = frozenset({"ping", "health", "shutdown", "service", "uids"})
_FINAL = {
    "exec": frozenset({"exit"}),
    "console": frozenset({"exit"}),
    "logs": frozenset({"end"}),
    "connect": frozenset({"close"}),
}


def _final(request: str, reply: str) -> bool:
    return reply == "error" or request in _SINGLE_REPLY or reply in _FINAL.get(request, ())


class _Session:
    """One external connection: its id routes and its serialized writer."""

    def __init__(self, conn: anyio.abc.ByteStream) -> None:
        self.conn = conn
        self.routes: dict[int, tuple[str, Channel]] = {}
        self._lock = anyio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        async with self._lock:
            await self.conn.send(encode_frame(message))


class AgentMux(Actor[None]):
    def __init__(
        self,
        vm: str,
        run_dir: Path,
        agent: AgentConnection,
        *,
        on_detach: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(f"vm/{vm}/agent-mux")
        self._on_detach = on_detach
        self.vm = vm
        self.path = run_dir / MUX_SOCKET
        self._agent = agent
        self._listener: anyio.abc.SocketListener | None = None

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.path.unlink(missing_ok=True)
        self._listener = await anyio.create_unix_listener(self.path)
        os.chmod(self.path, 0o600)
        task_status.started()
        await self._listener.serve(self._serve)

    async def teardown(self) -> None:
        if self._listener is not None:
            await self._listener.aclose()
            self._listener = None
        self.path.unlink(missing_ok=True)

    async def _serve(self, conn: anyio.abc.ByteStream) -> None:
        session = _Session(conn)
        async with conn, anyio.create_task_group() as tg:
            try:
                client = await self._agent.client(timeout=10)
                await session.send({**client.hello, "id": 0})
                reader = FrameReader(conn)
                while (message := await reader.read()) is not None:
                    await self._route(session, message, tg)
            except (ProtocolError, MvmError, anyio.BrokenResourceError, OSError) as exc:
                log.debug("mux.session_ended", vm=self.vm, error=repr(exc))
            finally:
                tg.cancel_scope.cancel()
                with anyio.CancelScope(shield=True):
                    for _, channel in list(session.routes.values()):
                        await channel.close()

    async def _route(
        self, session: _Session, message: dict[str, Any], tg: anyio.abc.TaskGroup
    ) -> None:
        ident, kind = message["id"], message["t"]
        if ident == 0:
            return
        fields = {k: v for k, v in message.items() if k not in ("t", "id")}
        if kind == DETACH_REQUEST:  # for the engine, not the guest: answered here
            if self._on_detach is None:
                await session.send(
                    {
                        "t": "error",
                        "id": ident,
                        "code": "E_DETACH",
                        "message": "this engine cannot detach the VM",
                    }
                )
            else:
                await session.send({"t": "ok", "id": ident})
                await self._on_detach()
            return
        route = session.routes.get(ident)
        if route is None:
            client = await self._agent.client(timeout=10)
            channel = await client.open_channel(kind, raw=True, **fields)
            session.routes[ident] = (kind, channel)
            tg.start_soon(self._relay_back, session, ident, kind, channel)
            return
        _, channel = route
        with suppress(AgentError):
            await channel.send(kind, **fields)
        if kind == "close":
            session.routes.pop(ident, None)
            await channel.close()

    async def _relay_back(self, session: _Session, ident: int, request: str, ch: Channel) -> None:
        try:
            while True:
                try:
                    reply = await ch.next_raw()
                except AgentError as exc:
                    reply = {"t": "error", "code": exc.code, "message": exc.message}
                reply["id"] = ident
                with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    await session.send(reply)
                if _final(request, reply["t"]):
                    ch.remote_closed = True  # finished: nothing to tear down in the guest
                    return
        finally:
            if session.routes.get(ident, (None, None))[1] is ch:
                del session.routes[ident]
            with anyio.CancelScope(shield=True):
                await ch.close()
