"""A small QMP client on anyio: greeting, capabilities negotiation, commands, events.

QMP is newline-delimited JSON over a Unix socket. Asynchronous events may
arrive between a command and its reply, so every command carries an ``id`` and
whatever else comes first is kept in ``events``. One command is in flight at a
time (QEMU answers in order anyway). Errors come back as ``BackendError``
(``E_QMP``) carrying QEMU's own ``desc``, which is the useful part
("Could not open 'x': No such file or directory").
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from mvm.engine.base.errors import BackendError

MAX_MESSAGE = 16 * 1024 * 1024
DEFAULT_TIMEOUT_S = 10.0


class QmpClient:
    """One negotiated QMP session. Use ``QmpClient.connect`` (an async context manager)."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._ids = itertools.count(1)
        self._lock = anyio.Lock()
        self.greeting: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, path: Path | str, *, timeout: float = DEFAULT_TIMEOUT_S
    ) -> AsyncIterator[QmpClient]:
        """Dial the socket, read the greeting, leave negotiation mode."""
        try:
            stream = await anyio.connect_unix(str(path))
        except OSError as exc:
            raise BackendError(
                f"cannot connect to QMP socket {path}: {exc.strerror or exc}",
                code="E_QMP_CONNECT",
            ) from None
        async with stream:
            client = cls(stream)
            await client.handshake(timeout=timeout)
            yield client

    async def handshake(self, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        with anyio.fail_after(timeout):
            first = await self._read()
        if "QMP" not in first:
            raise BackendError(f"not a QMP greeting: {first!r:.200}", code="E_QMP_PROTOCOL")
        self.greeting = first["QMP"]
        await self.execute("qmp_capabilities", timeout=timeout)

    async def execute(
        self,
        command: str,
        arguments: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> dict[str, Any]:
        """Run one command; its ``return`` value (a non-object one comes as ``{"return": v}``)."""
        request: dict[str, Any] = {"execute": command, "id": next(self._ids)}
        if arguments:
            request["arguments"] = arguments
        async with self._lock:
            try:
                with anyio.fail_after(timeout):
                    await self._stream.send(json.dumps(request).encode() + b"\n")
                    while True:
                        msg = await self._read()
                        if "event" in msg:
                            self.events.append(msg)
                            continue
                        if msg.get("id") != request["id"]:
                            continue  # a reply to a command abandoned by an earlier timeout
                        break
            except TimeoutError:
                raise BackendError(
                    f"QMP {command}: no reply within {timeout:g} s", code="E_QMP_TIMEOUT"
                ) from None
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                raise BackendError(
                    f"QMP {command}: connection lost ({exc!r})", code="E_QMP_CLOSED"
                ) from None
        if "error" in msg:
            err = msg["error"]
            desc = err.get("desc", "unknown error") if isinstance(err, dict) else str(err)
            klass = err.get("class", "") if isinstance(err, dict) else ""
            raise BackendError(
                f"QMP {command} failed: {desc}" + (f" ({klass})" if klass else ""),
                code="E_QMP",
            )
        value = msg.get("return", {})
        return value if isinstance(value, dict) else {"return": value}

    async def wait_event(self, name: str, *, timeout: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
        """The first event called ``name``, whether already received or still to come."""
        for i, event in enumerate(self.events):
            if event.get("event") == name:
                return self.events.pop(i)
        async with self._lock:
            try:
                with anyio.fail_after(timeout):
                    while True:
                        msg = await self._read()
                        if msg.get("event") == name:
                            return msg
                        if "event" in msg:
                            self.events.append(msg)
            except TimeoutError:
                raise BackendError(
                    f"QMP event {name} did not arrive within {timeout:g} s", code="E_QMP_TIMEOUT"
                ) from None

    async def _read(self) -> dict[str, Any]:
        try:
            line = await self._reader.receive_until(b"\n", MAX_MESSAGE)
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
        ):
            raise BackendError("QMP connection closed by QEMU", code="E_QMP_CLOSED") from None
        except anyio.DelimiterNotFound:
            raise BackendError("QMP message too large", code="E_QMP_PROTOCOL") from None
        try:
            msg = json.loads(line)
        except ValueError:
            raise BackendError(
                f"QMP sent invalid JSON: {line[:200]!r}", code="E_QMP_PROTOCOL"
            ) from None
        if not isinstance(msg, dict):
            raise BackendError(f"QMP sent a non-object: {line[:200]!r}", code="E_QMP_PROTOCOL")
        return msg
