"""Host CPU of many health loops: N HealthCheck actors at a 1 s interval.

All loops poll one stub agent (the real guest agent as a host process, with one
health check of its own), so the number is the engine's cost per loop: actor
wake-ups, requests over the multiplexed agent connection and threshold logic.
Target: 1,000 loops < 5 % of one core.

    mvmctl bench health --count 1000 --json bench/results/health.json
"""

from __future__ import annotations

import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from mvm.actors.health_check import HealthCheck, HealthPolicy
from mvm.backends.guest.build import agent_binary
from mvm.backends.guest.client import AgentClient
from mvm.bench.common import free_port, host_info
from mvm.engine.base.log import configure_logging
from mvm.engine.runtime.events import EventBus
from mvm.engine.runtime.supervisor import RestartPolicy, Supervisor

MEASURE_SECONDS = 10.0


class _Fixed:
    def __init__(self, client: AgentClient) -> None:
        self._client = client

    async def client(self, timeout: float = 30.0) -> AgentClient:
        return self._client


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run(count: int = 1000, runs: int = 1) -> dict[str, Any]:
    configure_logging(level="warning")
    root = Path(tempfile.mkdtemp(prefix="mvmbh-", dir="/tmp"))
    check = root / "health" / "web"
    check.mkdir(parents=True)
    (check / "cmd").write_text("true\n")
    (check / "interval").write_text("1\n")
    (check / "timeout").write_text("1\n")
    (root / "logs").mkdir()
    os.mkfifo(root / "ctl")
    port = free_port()
    agent = subprocess.Popen(
        [
            str(agent_binary()),
            "--tcp-listen",
            f"127.0.0.1:{port}",
            "--health-dir",
            str(root / "health"),
            "--log-dir",
            str(root / "logs"),
            "--ctl",
            str(root / "ctl"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with anyio.fail_after(10):
            while True:
                try:
                    stream = await anyio.connect_tcp("127.0.0.1", port)
                    break
                except OSError:
                    await anyio.sleep(0.02)
        bus = EventBus()
        async with AgentClient.connect(stream, hello_timeout=10) as client:
            source = _Fixed(client)
            async with Supervisor("bench-health", events=bus) as sup:
                for i in range(count):
                    await sup.start(
                        HealthCheck(
                            f"vm{i}",
                            "web",
                            source,
                            bus=bus,
                            policy=HealthPolicy(poll_interval_s=1.0),
                        ),
                        policy=RestartPolicy(kind="never"),
                    )
                await anyio.sleep(2.0)  # let the loops spread out
                cpu0, t0 = _cpu_s(), time.monotonic()
                await anyio.sleep(MEASURE_SECONDS)
                cpu, wall = _cpu_s() - cpu0, time.monotonic() - t0
                for i in range(count):
                    await sup.stop(f"vm/vm{i}/health/web")
    finally:
        agent.kill()
        agent.wait()
    return {
        "benchmark": "health",
        "backend": "stub",
        "unit": "fraction of one core",
        "host": host_info(),
        "count": count,
        "interval_s": 1.0,
        "measured_s": wall,
        "cpu_fraction_of_core": cpu / wall,
        "cpu_per_loop_us_per_s": cpu / wall / count * 1e6,
        "target_fraction": 0.05,
        "samples": {},
    }


def summary_line(result: dict[str, Any]) -> str:
    return (
        f"health: {result['count']} loops at 1 s use "
        f"{result['cpu_fraction_of_core'] * 100:.1f} % of one core "
        f"({result['cpu_per_loop_us_per_s']:.0f} us CPU per loop per second; target < 5 %)"
    )
