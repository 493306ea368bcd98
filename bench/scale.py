"""Control-plane cost: N VMs started in parallel from one event loop.

With the ``stub`` backend (the default) each "VM" is the real guest agent as a
host process, so what is measured is mvm itself: the engine's CPU seconds and
resident memory per VM to start N VMs (store rows, actors, agent links) and per
VM-second while they idle. Targets: <= 2 ms CPU and <= 1 MiB RSS per idle VM at
N = 1,000. With ``--backend qemu`` it boots N real TCG guests (keep N small).

    mvmctl bench scale --count 1000 --json bench/results/scale.json
"""

from __future__ import annotations

import os
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from mvm import Engine, Image, VmRequest
from mvm.backends.demo import DEMO_SPEC
from mvm.bench.common import host_info
from mvm.engine.base.log import configure_logging
from mvm.engine.builders.offline_image import build_offline_image

IDLE_SECONDS = 5.0


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _stub_image() -> Image:
    image_dir = Path(tempfile.mkdtemp(prefix="mvmbs-img-", dir="/tmp"))
    for name in ("vmlinux", "rootfs.ext4"):
        (image_dir / name).write_bytes(b"stub")
    (image_dir / "mvm-meta.json").write_text('{"name": "stub", "sealed": false}')
    return Image.load(image_dir)


def _raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def run(count: int = 1000, backend: str = "stub", runs: int = 3) -> dict[str, Any]:
    """``runs`` rounds of start N / idle / stop N in one engine; medians over rounds
    (one round's CPU figure moves by ~20 % on this nested-virt host)."""
    os.environ.setdefault("MVM_HOME", tempfile.mkdtemp(prefix="mvmbs-", dir="/tmp"))
    configure_logging(level="warning")  # per-VM info lines would dominate the CPU figures
    _raise_fd_limit()
    image = _stub_image() if backend == "stub" else await build_offline_image(DEMO_SPEC)
    rounds: list[dict[str, float]] = []
    async with Engine.open() as engine:
        rss_before = _rss_mib()  # per-VM RSS counts from here: later rounds reuse freed memory
        for _ in range(max(1, runs)):
            rounds.append(await _round(engine, image, count, backend, rss_before))
    samples = {key: [r[key] for r in rounds] for key in rounds[0]}
    medians = {key: statistics.median(values) for key, values in samples.items()}
    return {
        "benchmark": "scale",
        "backend": backend,
        "unit": "s",
        "host": host_info(),
        "count": count,
        "runs": len(rounds),
        **medians,
        "start_cpu_per_vm_ms": medians["start_cpu_s"] / count * 1000,
        "targets": {"cpu_per_vm_ms": 2.0, "rss_per_vm_mib": 1.0},
        "samples": samples,
    }


async def _round(
    engine: Engine, image: Image, count: int, backend: str, rss_before: float
) -> dict[str, float]:
    limiter = anyio.CapacityLimiter(64 if backend == "stub" else 4)
    cpu0, t0 = _cpu_s(), time.monotonic()

    async def start(i: int) -> None:
        async with limiter:
            await engine.start(
                VmRequest(name=f"s{i}", image_dir=str(image.directory), backend=backend), image
            )

    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(start, i)
    cpu1, t1 = _cpu_s(), time.monotonic()
    await anyio.sleep(IDLE_SECONDS)
    cpu2, rss2 = _cpu_s(), _rss_mib()
    t_stop = time.monotonic()
    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(engine.stop, f"s{i}")
    return {
        "start_wall_s": t1 - t0,
        "start_cpu_s": cpu1 - cpu0,
        "idle_cpu_per_vm_ms_per_s": (cpu2 - cpu1) / IDLE_SECONDS / count * 1000,
        "rss_per_vm_mib": (rss2 - rss_before) / count,
        "rss_total_mib": rss2,
        "stop_wall_s": time.monotonic() - t_stop,
    }


def summary_line(result: dict[str, Any]) -> str:
    return (
        f"scale ({result['backend']}, N={result['count']}): start {result['start_wall_s']:.1f} s "
        f"wall, {result['start_cpu_per_vm_ms']:.2f} ms CPU/VM; idle "
        f"{result['idle_cpu_per_vm_ms_per_s']:.3f} ms CPU/VM/s; "
        f"{result['rss_per_vm_mib'] * 1024:.0f} KiB RSS/VM"
    )
