"""Hybrid vsock handshake (``CONNECT <port>\\n`` -> ``OK <n>\\n``) against real Unix servers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import anyio.abc
import pytest

from mvm.backends.vmm.hybrid_vsock import HandshakeError, HybridVsockEndpoint, parse_reply

Behaviour = Callable[[anyio.abc.SocketStream, int], Awaitable[None]]


async def _read_line(stream: anyio.abc.SocketStream) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        line += await stream.receive(1)
    return line


async def _serve(
    sock: Path, behaviour: Behaviour, *, task_status: anyio.abc.TaskStatus[list[bytes]]
) -> None:
    """Accept connections forever; the n-th one (0-based) is handled by ``behaviour``."""
    requests: list[bytes] = []
    listener = await anyio.create_unix_listener(sock)
    task_status.started(requests)
    count = 0

    async def handle(stream: anyio.abc.SocketStream, n: int) -> None:
        async with stream:
            requests.append(await _read_line(stream))
            await behaviour(stream, n)

    async with listener, anyio.create_task_group() as tg:
        while True:
            stream = await listener.accept()
            tg.start_soon(handle, stream, count)
            count += 1


async def _connect(sock: Path, behaviour: Behaviour, **kw: float) -> tuple[bytes, list[bytes]]:
    """Connect through the endpoint, return the first guest bytes and what the server saw."""
    error: HandshakeError | None = None
    first = b""
    async with anyio.create_task_group() as tg:
        requests = await tg.start(_serve, sock, behaviour)
        try:
            with anyio.fail_after(5):
                stream = await HybridVsockEndpoint(sock, 5252, **kw).connect()
            async with stream:
                await stream.send(b"ping")
                first = await stream.receive()
        except HandshakeError as exc:  # raised outside the task group, not in a group
            error = exc
        tg.cancel_scope.cancel()
    if error is not None:
        raise error
    return first, requests


async def test_ok_then_guest_bytes_are_not_swallowed(tmp_path: Path) -> None:
    async def ok(stream: anyio.abc.SocketStream, n: int) -> None:
        # The OK line and the guest's first bytes in one segment: none may be lost.
        await stream.send(b"OK 1073741824\nHELLO")
        assert await stream.receive() == b"ping"

    first, requests = await _connect(tmp_path / "v.sock", ok)
    assert first == b"HELLO"
    assert requests == [b"CONNECT 5252\n"]


async def test_retries_while_guest_not_listening(tmp_path: Path) -> None:
    async def late(stream: anyio.abc.SocketStream, n: int) -> None:
        if n < 3:
            return  # Firecracker closes the connection: nothing listens on the port yet
        await stream.send(b"OK 7\n")
        await stream.send(b"up")
        await stream.receive()

    first, requests = await _connect(tmp_path / "v.sock", late)
    assert first == b"up"
    assert requests == [b"CONNECT 5252\n"] * 4


async def test_waits_for_the_socket_to_appear(tmp_path: Path) -> None:
    sock = tmp_path / "v.sock"
    got: list[bytes] = []

    async def client() -> None:
        with anyio.fail_after(5):
            stream = await HybridVsockEndpoint(sock, 5252).connect()
        async with stream:
            got.append(await stream.receive())

    async def ok(stream: anyio.abc.SocketStream, n: int) -> None:
        await stream.send(b"OK 1\nhi")
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(client)
        await anyio.sleep(0.2)  # the VMM is "still starting": no socket file yet
        assert not sock.exists()
        await tg.start(_serve, sock, ok)
        while not got:
            await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    assert got == [b"hi"]


async def test_silent_vmm_is_retried_after_the_handshake_timeout(tmp_path: Path) -> None:
    async def silent_then_ok(stream: anyio.abc.SocketStream, n: int) -> None:
        if n == 0:
            await anyio.sleep(10)  # never answers; the client gives up on this attempt
        await stream.send(b"OK 2\nyes")
        await stream.receive()

    first, requests = await _connect(tmp_path / "v.sock", silent_then_ok, handshake_timeout=0.2)
    assert first == b"yes" and len(requests) == 2


@pytest.mark.parametrize(
    ("reply", "needle"),
    [
        (b"NOPE\n", "'NOPE'"),
        (b"OK\n", "'OK'"),
        (b"OK abc\n", "'OK abc'"),
        (b"ok 5\n", "'ok 5'"),
        (b"X" * 100, "exceeds 64 bytes"),
        (b"OK 12", "closed mid-answer"),
    ],
)
async def test_garbage_is_a_coded_error_not_a_retry(
    tmp_path: Path, reply: bytes, needle: str
) -> None:
    attempts = 0

    async def garbage(stream: anyio.abc.SocketStream, n: int) -> None:
        nonlocal attempts
        attempts += 1
        await stream.send(reply)

    with pytest.raises(HandshakeError) as err:
        await _connect(tmp_path / "v.sock", garbage)
    assert err.value.code == "E_VSOCK_HANDSHAKE"
    assert needle in err.value.message
    assert attempts == 1


def test_parse_reply() -> None:
    assert parse_reply(b"OK 0\n") == 0
    assert parse_reply(b"OK 4294967295\n") == 4294967295
    for bad in (b"OK -1\n", b"OK 1 2\n", b"", b"\n", b"OK  1\n"):
        with pytest.raises(HandshakeError):
            parse_reply(bad)
