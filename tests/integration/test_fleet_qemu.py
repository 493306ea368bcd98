"""The fleet on a real multi-node Ray cluster with real QEMU VMs (issue 18).

Two raylets on this machine (ray.cluster_utils.Cluster), A (head, 127.0.0.2) and B
(127.0.0.3), each an mvm host with its own MVM_HOME (the ``mvm.home`` label). Two
demo VMs are spread over them; exec and a forwarded page reach each through its node's
address. Then B's raylet is SIGKILLed: its VM is ``lost`` and restarted on A (new
generation); B comes back (a new raylet, same home) and its host agent's startup kills
the stale copy, so one VMM of that VM runs anywhere. At most 2 VMs run at a time.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

ray = pytest.importorskip("ray")  # the fleet extra: scripts/setup --test installs it

from conftest import _kill_what_the_test_left  # noqa: E402
from helpers.vmm_processes import vmm_pids  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from mvm import Image, PortMapping, VmRequest  # noqa: E402
from mvm.fleet import Fleet, FleetVm  # noqa: E402

pytestmark = pytest.mark.qemu

FAST = {  # the GCS notices a dead raylet in ~1 s (Ray's defaults: ~15 s)
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 300,
    "health_check_failure_threshold": 3,
}
IPS = {"A": "127.0.0.2", "B": "127.0.0.3"}


def _node_args(key: str, home: Path) -> dict[str, Any]:
    return {
        "num_cpus": 1,
        "node_ip_address": IPS[key],
        "object_store_memory": 80 * 1024 * 1024,
        "labels": {"mvm.home": str(home), "node": key},
        "resources": {"mvm_host": 1, "mvm_vcpus": 2, "mvm_memory_mib": 2048},
    }


@pytest.fixture
def cluster() -> Iterator[dict[str, Any]]:
    homes = {k: Path(tempfile.mkdtemp(prefix=f"mvmq{k}-", dir="/tmp")) for k in IPS}
    head = _node_args("A", homes["A"]) | {"include_dashboard": False, "_system_config": FAST}
    c = Cluster(initialize_head=True, head_node_args=head)
    nodes = {"A": c.head_node, "B": c.add_node(**_node_args("B", homes["B"]))}
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="mvm", log_to_driver=False)
    state = {"cluster": c, "homes": homes, "nodes": nodes}
    try:
        yield state
    finally:
        ray.shutdown()
        c.shutdown()
        for home in homes.values():
            _kill_what_the_test_left(home)
            shutil.rmtree(home, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _page(vm: FleetVm) -> str:
    async with httpx.AsyncClient(timeout=20) as client:
        response = await client.get(f"http://{await vm.address(80)}/")
    assert response.status_code == 200
    return response.text


async def test_two_nodes_exec_pages_node_loss_restart_and_no_duplicate_after_return(
    cluster: dict[str, Any], demo_dev_image: Image
) -> None:
    homes, nodes = cluster["homes"], cluster["nodes"]
    async with Fleet.connect() as fleet:
        home_of = {n.node_id: n.home for n in await fleet.nodes()}
        vms = {}
        for name in ("f1", "f2"):
            request = VmRequest(
                name=name,
                image_dir=str(demo_dev_image.directory),
                ports=(PortMapping(_free_port(), 80),),
            )
            vms[name] = await fleet.start(request, strategy="spread", restart="on-node-loss")
        entries = {name: await vm.entry() for name, vm in vms.items()}
        on = {home_of[e.node_id]: name for name, e in entries.items()}
        assert set(on) == {str(homes["A"]), str(homes["B"])}, entries
        for name, vm in vms.items():
            assert (await vm.exec(["hostname"])).stdout.decode().strip() == name
            assert "Hello from mvm" in await _page(vm)
            assert (await vm.address(80)).startswith(entries[name].node_address or "?")
            assert len(vmm_pids(Path(home_of[entries[name].node_id]), name, b"qemu-system")) == 1

        stayer, mover = on[str(homes["A"])], on[str(homes["B"])]
        await vms[stayer].stop()  # at most 2 VMMs from here on: the mover and its copy
        assert not vmm_pids(homes["A"], stayer, b"qemu-system")

        raylet = nodes["B"].all_processes["raylet"][0].process
        os.kill(raylet.pid, signal.SIGKILL)
        with trio.fail_after(90):
            while True:
                entry = await vms[mover].entry()
                if entry.generation == 2 and entry.state == "running":
                    break
                await trio.sleep(0.2)
        assert home_of.get(entry.node_id) == str(homes["A"])
        assert entry.reason is not None and "left the cluster" in entry.reason
        assert (await vms[mover].exec(["hostname"])).stdout.decode().strip() == mover
        assert "Hello from mvm" in await _page(vms[mover])
        assert (await vms[mover].address(80)).startswith(IPS["A"] + ":")
        # the lost node's copy outlived its raylet (its shim has its own session)
        assert len(vmm_pids(homes["B"], mover, b"qemu-system")) == 1

        cluster["cluster"].remove_node(nodes["B"], allow_graceful=False)
        nodes["B"] = cluster["cluster"].add_node(**_node_args("B", homes["B"]))
        with trio.fail_after(60):
            while vmm_pids(homes["B"], mover, b"qemu-system"):
                await trio.sleep(0.2)
        assert len(vmm_pids(homes["A"], mover, b"qemu-system")) == 1  # no duplicate, no orphan
        infos = [i for i in await fleet.list() if i.name == mover]
        assert len(infos) == 1 and infos[0].node_id == entry.node_id
        assert infos[0].vm_state == "running"
        await vms[mover].stop()
        assert not vmm_pids(homes["A"], mover, b"qemu-system")
