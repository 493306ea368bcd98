"""Clone-to-agent-ready latency vs cold boot, in the same run on the same host.

A demo VM is booted and snapshotted once (not timed into either side). Then
runs alternate: a cold boot (``engine.start`` until the agent's hello) and a
clone (``engine.clone`` until the agent confirmed the clone's new identity,
which is the moment a clone is usable); drift on a noisy host hits both alike.
Each VM is stopped before the next run, so runs never overlap. The target is
clone p50 <= 40 % of cold-boot p50. Finally ``--count`` clones are restored
concurrently once, to show what parallel cloning costs on this host.

    mvmctl bench clone --runs 20 --json bench/results/clone.json
"""

from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import anyio

from mvm import Engine, Image, VmRequest
from mvm.backends.demo import DEMO_SPEC
from mvm.bench.common import Progress, host_info, round_label, summary
from mvm.engine.builders.offline_image import build_offline_image

TARGET_RATIO = 0.40
SNAPSHOT = "bench-clone"


async def cold_boot(engine: Engine, image: Image, i: int) -> float:
    t0 = time.monotonic()
    vm = await engine.start(VmRequest(name=f"cold{i}", image_dir=str(image.directory)), image)
    elapsed = time.monotonic() - t0
    await engine.stop(vm.name)
    return elapsed


async def clone_once(engine: Engine, i: int) -> float:
    t0 = time.monotonic()
    vm = await engine.clone(SNAPSHOT, f"clone{i}")
    elapsed = time.monotonic() - t0
    assert vm.hello.get("hostname") == f"clone{i}", vm.hello
    await engine.stop(vm.name)
    return elapsed


async def parallel_clones(engine: Engine, count: int) -> dict[str, Any]:
    """``count`` clones restored at once: wall time until all are ready, and each one's."""
    each: list[float] = []
    t0 = time.monotonic()

    async def one(k: int) -> None:
        await engine.clone(SNAPSHOT, f"par{k}")
        each.append(time.monotonic() - t0)

    async with anyio.create_task_group() as tg:
        for k in range(count):
            tg.start_soon(one, k)
    wall = time.monotonic() - t0
    async with anyio.create_task_group() as tg:
        for k in range(count):
            tg.start_soon(engine.stop, f"par{k}")
    return {"count": count, "all_ready_s": wall, "each_s": summary(each)}


async def run(
    runs: int = 20, warmup: int = 2, count: int | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """``progress`` gets one line per round (the CLI prints them on stderr)."""
    say = progress or (lambda _line: None)
    os.environ.setdefault("MVM_HOME", tempfile.mkdtemp(prefix="mvmbc-", dir="/tmp"))
    os.environ["MVM_ACCEL"] = "tcg"
    say("clone: building the demo image, booting and snapshotting the source VM (not timed)")
    image = await build_offline_image(DEMO_SPEC)
    cold: list[float] = []
    clones: list[float] = []
    async with Engine.open() as engine:
        src = await engine.start(VmRequest(name="source", image_dir=str(image.directory)), image)
        t0 = time.monotonic()
        snap_dir = await engine.snapshot(src.name, SNAPSHOT)
        snapshot_s = time.monotonic() - t0
        state_bytes = (snap_dir / "state.bin").stat().st_size
        await engine.stop(src.name)
        for i in range(warmup + runs):
            c = await cold_boot(engine, image, i)
            k = await clone_once(engine, i)
            say(f"clone {round_label(i, warmup, runs)}: cold boot {c:.2f} s, clone {k:.2f} s")
            if i >= warmup:
                cold.append(c)
                clones.append(k)
        say(f"clone: {count or 8} clones at once")
        parallel = await parallel_clones(engine, count or 8)
    cold_s, clone_s = summary(cold), summary(clones)
    return {
        "benchmark": "clone",
        "backend": "qemu",
        "accel": "tcg",
        "image": "demo",
        "unit": "s",
        "host": host_info(),
        "runs": runs,
        "warmup": warmup,
        "snapshot_s": snapshot_s,
        "snapshot_bytes": state_bytes,
        "cold_boot_s": cold_s,
        "clone_s": clone_s,
        "main_metric": "clone_s",
        "ratio_p50": clone_s["p50"] / cold_s["p50"],
        "target_ratio_p50": TARGET_RATIO,
        "parallel": parallel,
        "samples": {"cold_boot": cold, "clone": clones},
    }


def summary_line(result: dict[str, Any]) -> str:
    par = result["parallel"]
    return (
        f"clone: clone-to-agent-ready p50 {result['clone_s']['p50'] * 1000:.0f} ms "
        f"(p90 {result['clone_s']['p90'] * 1000:.0f} ms), cold boot p50 "
        f"{result['cold_boot_s']['p50'] * 1000:.0f} ms, ratio {result['ratio_p50']:.2f} "
        f"(target <= {result['target_ratio_p50']}); {par['count']} parallel clones ready in "
        f"{par['all_ready_s'] * 1000:.0f} ms"
    )
