"""Load through a forward (issue 15): 100 concurrent HTTP clients for 30 s against the
demo's httpd, through the host port forward and the agent channel. Every request must
succeed; p50/p99 latency and the request count go to the log; afterwards the VM is
still healthy and serving."""

from __future__ import annotations

import statistics
import time

import anyio
import pytest

from mvm import Engine, Image, PortMapping, VmRequest

pytestmark = pytest.mark.qemu

CLIENTS = 100
DURATION_S = 30.0


async def _get(port: int) -> bytes:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    async with stream:
        await stream.send(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        body = b""
        while True:
            try:
                body += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return body


async def _until_serving(port: int) -> None:
    """Ready is the agent's hello; httpd starts a moment later."""
    with anyio.fail_after(60):
        while b"Hello from mvm" not in await _get(port):
            await anyio.sleep(0.2)


async def test_100_clients_for_30_s_through_a_forward(demo_image: Image, free_port: int) -> None:
    latencies: list[float] = []
    errors: list[str] = []
    async with Engine.open() as engine:
        vm = await engine.start(
            VmRequest(
                name="load",
                image_dir=str(demo_image.directory),
                ports=(PortMapping(free_port, 80),),
            ),
            demo_image,
        )
        await _until_serving(free_port)
        deadline = time.monotonic() + DURATION_S

        async def client() -> None:
            while time.monotonic() < deadline:
                t0 = time.monotonic()
                try:
                    reply = await _get(free_port)
                except OSError as exc:
                    errors.append(repr(exc))
                    continue
                if not reply.startswith(b"HTTP/1.") or b"Hello from mvm" not in reply:
                    errors.append(f"bad reply {reply[:60]!r}")
                    continue
                latencies.append(time.monotonic() - t0)

        async with anyio.create_task_group() as tg:
            for _ in range(CLIENTS):
                tg.start_soon(client)
        healthy = await _get(free_port)
        rec = await engine.store.get_vm("load")
        await vm.stop()
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(
        f"\nload: {CLIENTS} clients x {DURATION_S:.0f} s: {len(latencies)} requests, "
        f"{len(errors)} errors, p50 {p50:.1f} ms, p99 {p99:.1f} ms"
    )
    assert errors == [], errors[:5]
    assert len(latencies) >= CLIENTS  # every client got through at least once
    assert b"Hello from mvm" in healthy
    assert rec is not None and rec.state == "running"
