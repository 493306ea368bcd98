"""One request id on an agent connection: its inbound frames and outbound window.

The reader task never blocks on a slow consumer (inboxes are unbounded in
frames); memory stays bounded because the agent keeps at most ``WINDOW``
unacknowledged bytes in flight per stream, and we acknowledge only what the
consumer has taken. The same window rule limits what we send.
"""

from __future__ import annotations

import math
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import anyio

from mvm.backends.guest.protocol import CHUNK, WINDOW, encode_data_frame
from mvm.engine.base.errors import AccessDenied, AgentError, MvmError

if TYPE_CHECKING:
    from mvm.backends.guest.client import AgentClient


def error_from_frame(message: dict[str, Any]) -> MvmError:
    code = str(message.get("code") or "E_AGENT")
    text = str(message.get("message") or "guest agent refused the request")
    if code == "E_SEALED":
        return AccessDenied(text, code=code, hint="build the image with dev = true")
    return AgentError(text, code=code)


class Channel:
    def __init__(self, ident: int, client: AgentClient, *, raw: bool = False) -> None:
        self.id = ident
        self.raw = raw  # relay mode: acks are passed through, flow control is end to end
        self._client = client
        self._send, self._recv = anyio.create_memory_object_stream[dict[str, Any]](math.inf)
        self._unacked = 0
        self._window_changed = anyio.Event()
        self._aborted: str | None = None
        self._abort_code = "E_AGENT_GONE"
        self.remote_closed = False
        self.local_closed = False

    # -- called by the reader task -----------------------------------------------------

    def deliver(self, message: dict[str, Any]) -> None:
        kind = message["t"]
        if kind == "ack" and not self.raw:
            self._unacked = max(0, self._unacked - int(message.get("n", 0)))
            self._wake_senders()
            return
        if kind in ("close", "error", "exit"):
            self.remote_closed = True
        with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            self._send.send_nowait(message)
        if self.remote_closed:
            self._wake_senders()

    def abort(self, reason: str, *, code: str = "E_AGENT_GONE") -> None:
        """End this request from the host side: the link closed (E_AGENT_GONE) or the
        agent restarted and forgot it (E_AGENT_RESTARTED)."""
        self._aborted = reason
        self._abort_code = code
        if code == "E_AGENT_RESTARTED":
            self.remote_closed = True  # the new agent never knew this id: nothing to close
        self._send.close()
        self._wake_senders()

    def _wake_senders(self) -> None:
        self._window_changed.set()
        self._window_changed = anyio.Event()

    # -- called by users ---------------------------------------------------------------

    async def next_raw(self) -> dict[str, Any]:
        """The next frame on this id; ``error`` frames are returned, not raised."""
        try:
            return await self._recv.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise AgentError(
                f"guest agent connection lost ({self._aborted or 'closed'})",
                code=self._abort_code,
            ) from None

    async def next(self) -> dict[str, Any]:
        """The next frame, raising the agent's ``error`` as a coded exception."""
        message = await self.next_raw()
        if message["t"] == "error":
            raise error_from_frame(message)
        return message

    async def ack(self, n: int) -> None:
        if n and not self.local_closed:
            with suppress(AgentError):
                await self._client.send_frame({"t": "ack", "id": self.id, "n": n})

    async def send_data(self, data: bytes, *, fd: int | None = None) -> None:
        """Send bytes in ≤64 KiB frames, never more than WINDOW unacknowledged."""
        view = memoryview(data)
        while view:
            piece = bytes(view[:CHUNK])
            view = view[CHUNK:]
            while self._unacked > 0 and self._unacked + len(piece) > WINDOW:
                if self._aborted or self.remote_closed:
                    raise anyio.BrokenResourceError
                await self._window_changed.wait()
            if self._aborted or self.remote_closed:
                raise anyio.BrokenResourceError
            self._unacked += len(piece)
            await self._client.send_encoded(encode_data_frame(self.id, piece, fd))

    async def send(self, kind: str, **fields: Any) -> None:
        await self._client.send_frame({"t": kind, "id": self.id, **fields})

    async def close(self) -> None:
        """Tell the agent to tear this id down (if it is still open) and forget it."""
        if not self.local_closed:
            self.local_closed = True
            if not self.remote_closed and not self._client.closed:
                with suppress(AgentError):
                    await self._client.send_frame({"t": "close", "id": self.id})
        self._client.forget(self.id)
        self._send.close()
