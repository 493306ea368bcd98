"""The host agent client against the real guest agent running as a host process.

The agent binary is the one baked into images (static C, built from
backends/guest/); with ``--tcp-listen`` it serves the same protocol as over
virtio-serial, so these tests exercise the client's demultiplexing, flow
control and error mapping against the real peer in milliseconds.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import pytest

from mvm import AccessDenied, AgentError, RequestTimeout
from mvm.backends.guest.build import agent_binary
from mvm.backends.guest.client import AgentClient


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    yield from _agent(tmp_path, sealed=False)


@pytest.fixture
def sealed_agent(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    yield from _agent(tmp_path, sealed=True)


def _agent(tmp_path: Path, *, sealed: bool) -> Iterator[tuple[int, Path]]:
    port = _free_port()
    (tmp_path / "health").mkdir()
    (tmp_path / "logs").mkdir()
    fifo = tmp_path / "ctl"
    os.mkfifo(fifo)
    argv = [
        str(agent_binary()),
        "--tcp-listen",
        f"127.0.0.1:{port}",
        "--health-dir",
        str(tmp_path / "health"),
        "--log-dir",
        str(tmp_path / "logs"),
        "--ctl",
        str(fifo),
    ]
    if sealed:
        argv.append("--sealed")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port, tmp_path
    finally:
        proc.kill()
        proc.wait()


@asynccontextmanager
async def _client(port: int) -> AsyncIterator[AgentClient]:
    with anyio.fail_after(10):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
                break
            except OSError:
                await anyio.sleep(0.01)
    async with AgentClient.connect(stream, hello_timeout=10) as client:
        yield client


async def _echo_server(tg: anyio.abc.TaskGroup) -> int:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")

    async def handle(conn: anyio.abc.SocketStream) -> None:
        async with conn:
            try:
                while True:
                    await conn.send(await conn.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass

    tg.start_soon(listener.serve, handle)
    return int(listener.extra(anyio.abc.SocketAttribute.local_port))


async def test_hello_ping_and_exec(agent: tuple[int, Path]) -> None:
    port, _ = agent
    async with _client(port) as client:
        assert client.hello["v"] == 1 and client.hello["sealed"] is False
        assert await client.ping() >= 0
        result = await client.exec(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (result.code, result.stdout, result.stderr) == (3, b"out\n", b"err\n")
        big = os.urandom(3 * 1024 * 1024)  # > WINDOW: exercises acks both ways
        echoed = await client.exec(["cat"], stdin=big)
        assert echoed.code == 0 and echoed.stdout == big


async def test_exec_timeout_kills_the_process(agent: tuple[int, Path]) -> None:
    port, _ = agent
    async with _client(port) as client:
        with pytest.raises(RequestTimeout) as info:
            await client.exec(["sleep", "30"], timeout=0.5)
        assert info.value.code == "E_EXEC_TIMEOUT"
        # The connection is still usable afterwards.
        assert (await client.exec(["true"])).code == 0


async def test_many_concurrent_tcp_streams_are_byte_exact(agent: tuple[int, Path]) -> None:
    port, _ = agent
    async with anyio.create_task_group() as servers:
        echo_port = await _echo_server(servers)
        async with _client(port) as client:

            async def one(i: int) -> None:
                payload = os.urandom(50_000 + i * 997)
                stream = await client.open_tcp(echo_port)
                async with stream, anyio.create_task_group() as tg:
                    tg.start_soon(stream.send, payload)
                    got = bytearray()
                    while len(got) < len(payload):
                        got += await stream.receive()
                assert bytes(got) == payload

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for i in range(60):
                        tg.start_soon(one, i)
        servers.cancel_scope.cancel()


async def test_connect_to_closed_port_is_coded(agent: tuple[int, Path]) -> None:
    port, _ = agent
    async with _client(port) as client:
        with pytest.raises(AgentError) as info:
            await client.open_tcp(_free_port())
        assert info.value.code == "E_CONNECT"


async def test_sealed_agent_refuses_exec(sealed_agent: tuple[int, Path]) -> None:
    port, _ = sealed_agent
    async with _client(port) as client:
        assert client.hello["sealed"] is True
        with pytest.raises(AccessDenied) as info:
            await client.exec(["id"])
        assert info.value.code == "E_SEALED"
        assert await client.ping() >= 0


async def test_health_and_logs(agent: tuple[int, Path]) -> None:
    port, root = agent
    for name, cmd in (("good", "true"), ("bad", "exit 1")):
        d = root / "health" / name
        d.mkdir()
        (d / "cmd").write_text(cmd + "\n")
        (d / "interval").write_text("1\n")
        (d / "timeout").write_text("1\n")
    (root / "logs" / "web.log").write_text("line one\nline two\n")
    async with _client(port) as client:
        with anyio.fail_after(15):
            while True:
                status = await client.health()
                if {s.get("status") for s in status.values()} >= {"healthy", "unhealthy"}:
                    break
                await anyio.sleep(0.2)
        assert status["good"]["status"] == "healthy"
        assert status["bad"]["status"] == "unhealthy"
        lines = await client.logs("web")
        assert [ln.line for ln in lines] == ["line one", "line two"]


async def test_wait_closed_when_agent_dies(tmp_path: Path) -> None:
    gen = _agent(tmp_path, sealed=False)
    port, _ = next(gen)
    async with _client(port) as client:
        gen.close()  # kills the agent
        with anyio.fail_after(5):
            await client.wait_closed()
        with pytest.raises(AgentError) as info:
            await client.ping()
        assert info.value.code == "E_AGENT_GONE"
