"""Forwarded-port cost: an mvm port forward vs a direct loopback connection.

Both sides talk to the same kind of echo server; the forwarded side goes
host socket -> PortForward actor -> agent stream (framed, base64, acked) ->
guest agent -> echo server. The default ``stub`` backend runs the real guest
agent as a host process, so the ratio isolates mvm's forwarding path; with
``--backend qemu`` the echo server runs inside a real TCG guest.

    mvmctl bench forward --runs 200 --json bench/results/forward.json
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from mvm import Engine, Image, ImageSpec, PortMapping, Service, VmRequest
from mvm.bench.common import free_port, host_info, summary
from mvm.engine.builders.offline_image import build_offline_image

PAYLOAD_MIB = 32
ECHO_SPEC = ImageSpec(
    name="bench-echo",
    services={"echo": Service(command="nc -ll -p 7 -e cat", restart="always")},
    dev=True,
)


async def _echo_server(tg: anyio.abc.TaskGroup) -> int:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")

    async def handle(conn: anyio.abc.SocketStream) -> None:
        async with conn:
            try:
                while True:
                    await conn.send(await conn.receive(65536))
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass

    tg.start_soon(listener.serve, handle)
    return int(listener.extra(anyio.abc.SocketAttribute.local_port))


async def _connect(port: int) -> anyio.abc.SocketStream:
    with anyio.fail_after(30):
        while True:
            try:
                return await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)


async def latency(port: int, runs: int, warmup: int) -> list[float]:
    """Round trips of a 64-byte message on one connection."""
    samples: list[float] = []
    async with await _connect(port) as conn:
        message = b"x" * 64
        for i in range(warmup + runs):
            t0 = time.perf_counter()
            await conn.send(message)
            got = b""
            while len(got) < len(message):
                got += await conn.receive()
            if i >= warmup:
                samples.append(time.perf_counter() - t0)
    return samples


async def throughput(port: int, mib: int = PAYLOAD_MIB) -> float:
    """MiB/s echoed through one connection (sending and receiving concurrently)."""
    block = os.urandom(64 * 1024)
    total = mib * 1024 * 1024
    async with await _connect(port) as conn:
        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:

            async def send() -> None:
                for _ in range(total // len(block)):
                    await conn.send(block)

            tg.start_soon(send)
            received = 0
            while received < total:
                received += len(await conn.receive(1 << 20))
        return mib / (time.perf_counter() - t0)


async def run(runs: int = 200, warmup: int = 20, backend: str = "stub") -> dict[str, Any]:
    os.environ.setdefault("MVM_HOME", tempfile.mkdtemp(prefix="mvmbf-", dir="/tmp"))
    forward_port = free_port()
    async with anyio.create_task_group() as tg:
        echo_port = await _echo_server(tg)
        if backend == "stub":
            image_dir = Path(tempfile.mkdtemp(prefix="mvmbf-img-", dir="/tmp"))
            for name in ("vmlinux", "rootfs.ext4"):
                (image_dir / name).write_bytes(b"stub")
            (image_dir / "mvm-meta.json").write_text('{"name": "stub", "sealed": false}')
            image = Image.load(image_dir)
            guest_port = echo_port
        else:
            image = await build_offline_image(ECHO_SPEC)
            guest_port = 7
        async with Engine.open() as engine:
            request = VmRequest(
                name="bench-fwd",
                image_dir=str(image.directory),
                backend=backend,
                ports=(PortMapping(forward_port, guest_port),),
            )
            await engine.start(request, image)
            direct_lat = await latency(echo_port, runs, warmup)
            fwd_lat = await latency(forward_port, runs, warmup)
            direct_tp = await throughput(echo_port)
            fwd_tp = await throughput(forward_port)
            await engine.stop("bench-fwd")
        tg.cancel_scope.cancel()
    fwd, direct = summary(fwd_lat), summary(direct_lat)
    return {
        "benchmark": "forward",
        "backend": backend,
        "unit": "s",
        "host": host_info(),
        "runs": runs,
        "main_metric": "forward_latency_s",
        "forward_latency_s": fwd,
        "direct_latency_s": direct,
        "ratio_p50": fwd["p50"] / direct["p50"],
        "forward_mib_s": fwd_tp,
        "direct_mib_s": direct_tp,
        "throughput_ratio": fwd_tp / direct_tp,
        "samples": {"forward": fwd_lat, "direct": direct_lat},
    }


def summary_line(result: dict[str, Any]) -> str:
    return (
        f"forward ({result['backend']}): latency p50 "
        f"{result['forward_latency_s']['p50'] * 1e6:.0f} us vs direct "
        f"{result['direct_latency_s']['p50'] * 1e6:.0f} us (ratio {result['ratio_p50']:.1f}), "
        f"p99 {result['forward_latency_s']['p99'] * 1e6:.0f} us; throughput "
        f"{result['forward_mib_s']:.0f} MiB/s vs {result['direct_mib_s']:.0f} MiB/s"
    )
