"""User-facing views of an agent channel: a TCP-like byte stream and an exec session."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import suppress

import anyio
import anyio.abc

from mvm.backends.guest.channel import Channel, error_from_frame
from mvm.engine.base.errors import AgentError


class AgentStream(anyio.abc.ByteStream):
    """A guest TCP connection carried over the agent (the guest leg of a port forward)."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._buffer = b""
        self._eof = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self._buffer:
            if self._eof:
                raise anyio.EndOfStream
            try:
                message = await self._channel.next_raw()
            except AgentError:
                raise anyio.BrokenResourceError from None
            kind = message["t"]
            if kind == "data":
                self._buffer = base64.b64decode(message.get("data", ""))
                await self._channel.ack(len(self._buffer))
            elif kind in ("eof", "close"):
                self._eof = True
            elif kind == "error":
                raise anyio.BrokenResourceError from error_from_frame(message)
        chunk, self._buffer = self._buffer[:max_bytes], self._buffer[max_bytes:]
        return chunk

    async def send(self, item: bytes) -> None:
        if self._channel.local_closed:
            raise anyio.ClosedResourceError
        try:
            await self._channel.send_data(item)
        except AgentError:
            raise anyio.BrokenResourceError from None

    async def send_eof(self) -> None:
        if not self._channel.local_closed and not self._channel.remote_closed:
            with suppress(AgentError):
                await self._channel.send("eof")

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await self._channel.close()


class ExecSession:
    """A process started by ``exec``: stream its output, feed stdin, signal it, resize its PTY."""

    def __init__(self, channel: Channel, *, pid: int) -> None:
        self._channel = channel
        self.pid = pid
        self.exit_code: int | None = None
        self.exit_signal: int | None = None
        self.exited = False

    async def output(self) -> AsyncIterator[tuple[int, bytes]]:
        """(fd, bytes) chunks until the process exits; then exit_code/exit_signal are set."""
        while not self.exited:
            message = await self._channel.next()
            kind = message["t"]
            if kind == "data":
                data = base64.b64decode(message.get("data", ""))
                await self._channel.ack(len(data))
                yield int(message.get("fd", 1)), data
            elif kind == "exit":
                code, sig = message.get("code"), message.get("signal")
                self.exit_code = int(code) if code is not None else None
                self.exit_signal = int(sig) if sig else None
                self.exited = True
            elif kind == "close":
                raise AgentError("guest agent closed the exec stream", code="E_AGENT_GONE")

    async def write(self, data: bytes) -> None:
        await self._channel.send_data(data, fd=0)

    async def close_stdin(self) -> None:
        with suppress(AgentError):
            await self._channel.send("eof")

    async def feed_stdin(self, data: bytes) -> None:
        """Write all of data then close stdin; a process that exits early just ends it."""
        with suppress(anyio.BrokenResourceError, AgentError):
            await self.write(data)
            await self.close_stdin()

    async def kill(self, sig: int = 15) -> None:
        if not self.exited:
            await self._channel.send("kill", sig=sig)

    async def resize(self, rows: int, cols: int) -> None:
        await self._channel.send("resize", rows=rows, cols=cols)
