"""A guest agent restart fails every in-flight request with E_AGENT_RESTARTED and
closes forwarded connections promptly (issue 15: they used to hang forever).

The real C agent runs as a host process behind SerialRelay, which keeps the host's
link open across the agent's death like virtio-serial does, so the restarted
agent's unsolicited hello arrives on the same link.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import anyio.abc
import pytest
from fakes.serial_relay import SerialRelay

from mvm.actors.port_forward import PortForward, bind_forward_listener
from mvm.backends.guest.build import agent_binary
from mvm.backends.guest.client import AgentClient
from mvm.engine.base.errors import AgentError
from mvm.engine.request.vmrequest import PortMapping


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Agent:
    """The agent binary on a fixed port; ``restart()`` SIGKILLs it and starts a new one."""

    def __init__(self, tmp: Path) -> None:
        self.port = _free_port()
        self.tmp = tmp
        for d in ("health", "logs"):
            (tmp / d).mkdir()
        os.mkfifo(tmp / "ctl")
        self.proc = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        argv = [
            str(agent_binary()), "--tcp-listen", f"127.0.0.1:{self.port}",
            "--health-dir", str(self.tmp / "health"), "--log-dir", str(self.tmp / "logs"),
            "--ctl", str(self.tmp / "ctl"),
        ]  # fmt: skip
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def restart(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = self._start()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path)
    try:
        yield a
    finally:
        a.stop()


async def _connect(port: int) -> anyio.abc.SocketStream:
    with anyio.fail_after(10):
        while True:
            try:
                return await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.01)


async def test_dial_regreet_is_not_a_restart(agent: Agent) -> None:
    """The host asks for a hello on every dial; the agent's own hello plus the answer
    to ours must not read as a restart."""
    stream = await _connect(agent.port)
    async with AgentClient.connect(stream, hello_timeout=10) as client:
        for _ in range(3):
            await client.ping()
        assert client.restarts == 0
        assert (await client.exec(["true"])).code == 0


async def test_exec_in_flight_fails_promptly_when_agent_restarts(agent: Agent) -> None:
    async with anyio.create_task_group() as tg:
        relay = SerialRelay(agent.port)
        port = await tg.start(relay.serve)
        stream = await _connect(port)
        async with AgentClient.connect(stream, hello_timeout=10) as client:
            old_pid = client.hello["pid"]
            async with client.open_exec(["sleep", "60"]) as proc:
                agent.restart()
                with anyio.fail_after(5), pytest.raises(AgentError) as info:
                    async for _ in proc.output():
                        pass
            assert info.value.code == "E_AGENT_RESTARTED"
            assert client.restarts == 1 and client.hello["pid"] != old_pid
            # The link is still usable: the new agent answers.
            assert (await client.exec(["echo", "hi"])).stdout == b"hi\n"
        tg.cancel_scope.cancel()


async def test_logs_follow_fails_when_agent_restarts(agent: Agent) -> None:
    async with anyio.create_task_group() as tg:
        relay = SerialRelay(agent.port)
        port = await tg.start(relay.serve)
        stream = await _connect(port)
        async with AgentClient.connect(stream, hello_timeout=10) as client:
            async with client.follow_logs() as lines:
                await client.ping()
                agent.restart()
                with anyio.fail_after(5), pytest.raises(AgentError) as info:
                    async for _ in lines:
                        pass
            assert info.value.code == "E_AGENT_RESTARTED"
        tg.cancel_scope.cancel()


class _Source:
    def __init__(self, client: AgentClient) -> None:
        self._client = client

    async def client(self, timeout: float = 30.0) -> AgentClient:
        return self._client


async def test_forwarded_connection_is_closed_when_agent_restarts(agent: Agent) -> None:
    async with anyio.create_task_group() as tg:
        # The "guest" service: on the host, since the stub agent connects to 127.0.0.1.
        service = await anyio.create_tcp_listener(local_host="127.0.0.1")
        service_port = int(service.extra(anyio.abc.SocketAttribute.local_port))

        async def hold(conn: anyio.abc.SocketStream) -> None:
            async with conn:
                await conn.send(b"ready")
                await anyio.sleep_forever()

        tg.start_soon(service.serve, hold)
        relay = SerialRelay(agent.port)
        port = await tg.start(relay.serve)
        stream = await _connect(port)
        async with AgentClient.connect(stream, hello_timeout=10) as client:
            mapping = PortMapping(_free_port(), service_port)
            listener = await bind_forward_listener(mapping)
            forward = PortForward("vm", mapping, listener, _Source(client))
            await tg.start(forward.run)
            conn = await anyio.connect_tcp("127.0.0.1", mapping.host_port)
            async with conn:
                assert await conn.receive() == b"ready"
                agent.restart()
                with anyio.fail_after(5):
                    try:
                        while await conn.receive():
                            pass
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        pass  # closed: what we want
            assert client.restarts == 1
        tg.cancel_scope.cancel()


class _FakeHealthClient:
    """Reports the service healthy; ``restarts`` is bumped to simulate a restart."""

    def __init__(self) -> None:
        self.restarts = 0
        self.checked = 0
        self.closed = False

    async def health(self) -> dict[str, dict[str, object]]:
        self.checked += 1000
        return {"web": {"status": "healthy", "checked_uptime_ms": self.checked}}


async def test_health_goes_unknown_after_an_agent_restart() -> None:
    from typing import cast

    from mvm.actors.health_check import HealthCheck, HealthPolicy
    from mvm.engine.runtime.events import EventBus

    fake = _FakeHealthClient()

    class Src:
        async def client(self, timeout: float = 30.0) -> AgentClient:
            return cast(AgentClient, fake)

    changes: list[str] = []

    async def on_change(service: str, state: str) -> None:
        changes.append(state)

    check = HealthCheck(
        "vm", "web", Src(), bus=EventBus(), policy=HealthPolicy(healthy_after=2),
        on_change=on_change,
    )  # fmt: skip
    await check._poll_once()
    await check._poll_once()
    assert check.state == "healthy"
    fake.restarts = 1
    await check._poll_once()  # resets, then sees one healthy verdict: not enough yet
    assert check.state == "unknown"
    assert changes == ["healthy", "unknown"]
    await check._poll_once()
    assert check.state == "healthy"
