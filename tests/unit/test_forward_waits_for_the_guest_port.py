"""A forward opened right after "ready" waits for the guest port instead of resetting
the client: ready is the agent's hello, the service behind the port starts a moment
later (the demo's first curl after `up` used to get "connection reset")."""

from __future__ import annotations

import anyio
import anyio.abc
import pytest

from mvm.actors import port_forward
from mvm.actors.port_forward import PortForward, bind_forward_listener
from mvm.engine.base.errors import AgentError
from mvm.engine.request.vmrequest import PortMapping


class _Echo(anyio.abc.ByteStream):
    """The guest leg: echoes what it is sent."""

    def __init__(self) -> None:
        self._send, self._recv = anyio.create_memory_object_stream[bytes](16)

    async def send(self, item: bytes) -> None:
        await self._send.send(item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self._recv.receive()
        except anyio.EndOfStream:
            raise anyio.EndOfStream from None

    async def send_eof(self) -> None:
        self._send.close()

    async def aclose(self) -> None:
        self._send.close()
        self._recv.close()


class _Client:
    def __init__(self, refusals: int, code: str = "E_CONNECT") -> None:
        self.refusals = refusals
        self.code = code
        self.attempts = 0

    async def open_tcp(self, port: int, timeout: float = 10.0) -> _Echo:
        self.attempts += 1
        if self.attempts <= self.refusals:
            raise AgentError("connect to 127.0.0.1 failed: Connection refused", code=self.code)
        return _Echo()


class _Source:
    def __init__(self, client: _Client) -> None:
        self._client = client

    async def client(self, timeout: float = 30.0) -> _Client:
        return self._client


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _through(client: _Client) -> bytes:
    mapping = PortMapping(_free_port(), 80)
    listener = await bind_forward_listener(mapping)
    forward = PortForward("vm", mapping, listener, _Source(client))  # type: ignore[arg-type]
    async with anyio.create_task_group() as tg:
        await tg.start(forward.run)
        conn = await anyio.connect_tcp("127.0.0.1", mapping.host_port)
        async with conn:
            await conn.send(b"ping")
            with anyio.fail_after(10):
                try:
                    got = await conn.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    got = b""
        tg.cancel_scope.cancel()
    await forward.teardown()
    return got


async def test_a_refusing_guest_port_is_retried_until_it_listens() -> None:
    client = _Client(refusals=3)
    assert await _through(client) == b"ping"
    assert client.attempts == 4


async def test_other_errors_and_a_port_that_never_listens_close_the_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert await _through(_Client(refusals=1, code="E_SEALED")) == b""
    monkeypatch.setattr(port_forward, "CONNECT_RETRY_S", 0.2)
    never = _Client(refusals=10_000)
    assert await _through(never) == b""
    assert 2 <= never.attempts < 20
