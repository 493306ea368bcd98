"""Health thresholds (pure logic) and the HealthCheck actor against the real agent."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import anyio

from mvm.actors.health_check import HealthCheck, HealthPolicy, HealthTracker
from mvm.backends.guest.build import agent_binary
from mvm.backends.guest.client import AgentClient
from mvm.engine.runtime.events import EventBus
from mvm.engine.runtime.supervisor import Supervisor


def test_thresholds_need_consecutive_fresh_verdicts() -> None:
    tracker = HealthTracker(HealthPolicy(unhealthy_after=2, healthy_after=1))
    assert tracker.state == "unknown" and not tracker.settled
    assert tracker.observe("healthy", 100) == "healthy"
    assert tracker.settled
    assert tracker.observe("unhealthy", 200) is None  # one failure is not enough
    assert not tracker.settled  # pending: the actor polls at the check interval
    assert tracker.observe("unhealthy", 200) is None  # same check seen twice: ignored
    assert tracker.observe("unhealthy", 300) == "unhealthy"
    assert tracker.settled
    assert tracker.observe("healthy", 400) == "healthy"


def test_a_success_resets_the_failure_count() -> None:
    tracker = HealthTracker(HealthPolicy(unhealthy_after=3))
    tracker.observe("healthy", 1)
    tracker.observe("unhealthy", 2)
    tracker.observe("unhealthy", 3)
    tracker.observe("healthy", 4)
    assert tracker.observe("unhealthy", 5) is None
    assert tracker.observe("unhealthy", 6) is None
    assert tracker.state == "healthy"


async def test_health_check_actor_flips_with_the_real_agent(tmp_path: Path) -> None:
    flag = tmp_path / "up"
    flag.touch()
    check = tmp_path / "health" / "web"
    check.mkdir(parents=True)
    (check / "cmd").write_text(f"test -e {flag}\n")
    (check / "interval").write_text("1\n")
    (check / "timeout").write_text("1\n")
    (tmp_path / "logs").mkdir()
    os.mkfifo(tmp_path / "ctl")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    agent = subprocess.Popen(
        [
            str(agent_binary()),
            "--tcp-listen",
            f"127.0.0.1:{port}",
            "--health-dir",
            str(tmp_path / "health"),
            "--log-dir",
            str(tmp_path / "logs"),
            "--ctl",
            str(tmp_path / "ctl"),
        ],
    )
    bus = EventBus()
    changes: list[tuple[str, str]] = []

    async def record(service: str, state: str) -> None:
        changes.append((service, state))

    try:
        with anyio.fail_after(10):
            while True:
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                    break
                except OSError:
                    await anyio.sleep(0.02)
        async with (
            AgentClient.connect(stream, hello_timeout=10) as client,
            bus.subscribe() as events,
        ):

            class Fixed:
                async def client(self, timeout: float = 30.0) -> AgentClient:
                    return client

            async with Supervisor("t", events=bus) as sup:
                actor = HealthCheck(
                    "vm1",
                    "web",
                    Fixed(),
                    bus=bus,
                    on_change=record,
                    policy=HealthPolicy(unhealthy_after=2, poll_interval_s=0.5),
                )
                await sup.start(actor)
                with anyio.fail_after(15):
                    while actor.state != "healthy":
                        await anyio.sleep(0.1)
                    flag.unlink()
                    while actor.state != "unhealthy":
                        await anyio.sleep(0.1)
                    flag.touch()
                    while actor.state != "healthy":
                        await anyio.sleep(0.1)
            kinds = []
            with anyio.move_on_after(0.5):
                async for event in events:
                    if event.kind == "health.changed":
                        kinds.append(event.data["status"])
        assert changes == [("web", "healthy"), ("web", "unhealthy"), ("web", "healthy")]
        assert kinds == ["healthy", "unhealthy", "healthy"]
    finally:
        agent.kill()
        agent.wait()
