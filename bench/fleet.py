"""The fleet's placement: N stub-VM starts across a 4-node Ray cluster on this machine,
and one start through the fleet against one local detached start, in the same run.

The cluster is real (``ray.cluster_utils.Cluster``: a GCS and 4 raylets, each an mvm
host with its own ``mvm.home`` label); each "VM" is the stub backend's (the real guest
agent as a host process) behind a real detached shim, so what is timed is mvm's fleet
path: the registry, Ray's placement of the VM's seat, the node's host agent and the
shim. Every VM holds a seat (a Ray worker process), a shim and an agent while it runs,
so ``--count`` starts go through a window of ``WINDOW`` at a time (start, then stop):
the numbers are placement latency (each start's wall time) and sustained throughput.

The overhead pair alternates a fleet start (placed, spread) with a local
``start_detached`` of the same request on the driver's own home; both stop before the
next sample.

    mvmctl bench fleet --count 1000 --json bench/results/fleet.json
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from mvm.bench.common import Progress, host_info, round_label, summary
from mvm.engine.request.vmrequest import VmRequest
from mvm.engine.store import StateStore

NODES = 4
WINDOW = 8
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000}


def _stub_image() -> Path:
    image = Path(tempfile.mkdtemp(prefix="mvmbf-img-", dir="/tmp"))
    (image / "vmlinux").write_bytes(b"stub")
    (image / "rootfs.ext4").write_bytes(b"stub")
    (image / "mvm-meta.json").write_text(json.dumps({"name": "stub", "sealed": False}))
    return image


def _request(image: Path, name: str) -> VmRequest:
    return VmRequest(name=name, image_dir=str(image), backend="stub", mode="detached")


def _node_args(i: int, home: Path) -> dict[str, Any]:
    return {
        "num_cpus": 1,
        "object_store_memory": 80 * 1024 * 1024,
        "labels": {"mvm.home": str(home), "node": f"n{i}"},
        "resources": {"mvm_host": 1, "mvm_vcpus": 64, "mvm_memory_mib": 64 * 1024},
    }


async def _window(fleet: Any, image: Path, count: int, say: Progress) -> dict[str, Any]:
    """``count`` start+stop cycles, ``WINDOW`` at a time: per-start latency, starts/s."""
    latencies: list[float] = []
    nodes: Counter[str] = Counter()
    limiter = anyio.CapacityLimiter(WINDOW)

    async def one(k: int) -> None:
        async with limiter:
            t0 = time.monotonic()
            vm = await fleet.start(_request(image, f"f{k}"), strategy="spread")
            latencies.append(time.monotonic() - t0)
            nodes[(await vm.entry()).node_id] += 1
            await vm.stop()
            if len(latencies) % 100 == 0:
                say(f"fleet: {len(latencies)}/{count} started")

    t0 = time.monotonic()
    async with anyio.create_task_group() as tg:
        for k in range(count):
            tg.start_soon(one, k)
    wall = time.monotonic() - t0
    return {
        "count": count,
        "window": WINDOW,
        "wall_s": wall,
        "starts_per_s": count / wall,
        "start_s": summary(latencies),
        "per_node": sorted(nodes.values()),
    }


async def _overhead(fleet: Any, image: Path, runs: int, warmup: int, say: Progress) -> Any:
    from mvm.engine.vm.detached import start_detached, stop_vm_record

    fleet_s: list[float] = []
    local_s: list[float] = []
    for i in range(warmup + runs):
        t0 = time.monotonic()
        vm = await fleet.start(_request(image, f"o{i}"), strategy="spread")
        f = time.monotonic() - t0
        await vm.stop()
        t0 = time.monotonic()
        await start_detached(_request(image, f"l{i}"))
        loc = time.monotonic() - t0
        async with StateStore.open() as store:
            rec = await store.get_vm(f"l{i}")
            assert rec is not None
            await stop_vm_record(store, rec)
        say(f"fleet {round_label(i, warmup, runs)}: fleet start {f:.3f} s, local {loc:.3f} s")
        if i >= warmup:
            fleet_s.append(f)
            local_s.append(loc)
    return summary(fleet_s), summary(local_s), fleet_s, local_s


async def run(
    runs: int = 10, warmup: int = 2, count: int | None = None, progress: Progress | None = None
) -> dict[str, Any]:
    """``count`` (default 1000) windowed starts, then ``runs`` overhead pairs."""
    from ray.cluster_utils import Cluster

    from mvm.fleet import Fleet

    say = progress or (lambda _line: None)
    count = count or 1000
    image = _stub_image()
    homes = [Path(tempfile.mkdtemp(prefix=f"mvmbf{i}-", dir="/tmp")) for i in range(NODES)]
    say(f"fleet: starting a {NODES}-node Ray cluster (not timed)")
    head = _node_args(0, homes[0]) | {"include_dashboard": False, "_system_config": FAST_HEALTH}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for i in range(1, NODES):
            cluster.add_node(**_node_args(i, homes[i]))
        cluster.wait_for_nodes()
        async with Fleet.connect(cluster.address) as fleet:
            window = await _window(fleet, image, count, say)
            fleet_s, local_s, f_samples, l_samples = await _overhead(
                fleet, image, runs, warmup, say
            )
    finally:
        cluster.shutdown()  # type: ignore[no-untyped-call]
        for home in [*homes, image]:
            shutil.rmtree(home, ignore_errors=True)
    return {
        "benchmark": "fleet",
        "backend": "stub",
        "unit": "s",
        "host": host_info(),
        "nodes": NODES,
        "placement": window,
        "runs": runs,
        "warmup": warmup,
        "fleet_start_s": fleet_s,
        "local_start_s": local_s,
        "main_metric": "fleet_start_s",
        "ratio_p50": fleet_s["p50"] / local_s["p50"],
        "samples": {"fleet_start": f_samples, "local_start": l_samples},
    }


def summary_line(result: dict[str, Any]) -> str:
    w = result["placement"]
    return (
        f"fleet: {w['count']} stub starts on {result['nodes']} nodes in {w['wall_s']:.1f} s "
        f"({w['starts_per_s']:.1f}/s, window {w['window']}), start p50 "
        f"{w['start_s']['p50'] * 1000:.0f} ms, per node {w['per_node']}; one start "
        f"{result['fleet_start_s']['p50'] * 1000:.0f} ms vs local "
        f"{result['local_start_s']['p50'] * 1000:.0f} ms (ratio {result['ratio_p50']:.2f})"
    )
