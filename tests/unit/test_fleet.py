"""The fleet (mvm.fleet, issue 18) on a real local Ray cluster, stub-backend VMs.

Three raylets on this machine (ray.cluster_utils.Cluster), each an mvm host with its own
``mvm.home`` label and resources: A (4 vCPUs, zone a), B (4 vCPUs, zone b), C (2 vCPUs,
zone b). The stub "VM" is the real guest agent as a host process, so placement, the
host agents, the registry and the detached shims all run for real in milliseconds. One
cluster serves the module; every test stops what it started.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")  # the fleet extra: scripts/setup --test installs it

from conftest import _kill_what_the_test_left  # noqa: E402
from helpers.vmm_processes import vmm_pids  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from mvm.engine.base.errors import MvmError  # noqa: E402
from mvm.engine.request.vmrequest import PortMapping, VmRequest  # noqa: E402
from mvm.fleet import Fleet  # noqa: E402

# A dead raylet is noticed by the GCS's health checks: every 0.3 s, 3 misses (Ray's
# defaults take ~15 s, too slow for a unit test).
FAST = {
    "health_check_initial_delay_ms": 0,
    "health_check_period_ms": 300,
    "health_check_timeout_ms": 300,
    "health_check_failure_threshold": 3,
}
NODES = {"A": ("a", 4), "B": ("b", 4), "C": ("b", 2)}


def _node_args(key: str, home: Path) -> dict[str, Any]:
    zone, vcpus = NODES[key]
    return {
        "num_cpus": 1,
        "object_store_memory": 80 * 1024 * 1024,
        "labels": {"mvm.home": str(home), "zone": zone, "node": key},
        "resources": {"mvm_host": 1, "mvm_vcpus": vcpus, "mvm_memory_mib": vcpus * 1024},
    }


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    homes = {k: Path(tempfile.mkdtemp(prefix=f"mvmf{k}-", dir="/tmp")) for k in NODES}
    head = _node_args("A", homes["A"]) | {"include_dashboard": False, "_system_config": FAST}
    c = Cluster(initialize_head=True, head_node_args=head)
    nodes = {"A": c.head_node}
    for key in ("B", "C"):
        nodes[key] = c.add_node(**_node_args(key, homes[key]))
    c.wait_for_nodes()
    ray.init(address=c.address, namespace="mvm", log_to_driver=False)
    ids = {k: n.node_id for k, n in nodes.items()}
    try:
        yield {
            "cluster": c,
            "homes": homes,
            "nodes": nodes,
            "ids": ids,
            "keys": {v: k for k, v in ids.items()},
        }
    finally:
        ray.shutdown()
        c.shutdown()
        for home in homes.values():
            _kill_what_the_test_left(home)
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    image = tmp_path_factory.mktemp("img")
    (image / "vmlinux").write_bytes(b"fake")
    (image / "rootfs.ext4").write_bytes(b"fake")
    (image / "mvm-meta.json").write_text(json.dumps({"name": "fake", "sealed": False}))
    return image


@pytest.fixture
async def fleet(cluster: dict[str, Any]) -> AsyncIterator[Fleet]:
    async with Fleet.connect() as f:
        yield f
        for info in await f.list():  # stop what the test started, on whichever node
            await f.vm(info.name).stop()


def _req(image: Path, name: str, vcpus: int = 1, **kw: Any) -> VmRequest:
    return VmRequest(name=name, image_dir=image, backend="stub", vcpus=vcpus, **kw)


async def _where(fleet: Fleet, cluster: dict[str, Any]) -> dict[str, str]:
    return {i.name: cluster["keys"][i.node_id] for i in await fleet.list()}


async def test_spread_puts_each_vm_on_its_own_node_and_exec_reaches_it(
    fleet: Fleet, cluster: dict[str, Any], image: Path
) -> None:
    for i in range(3):
        await fleet.start(_req(image, f"s{i}"), strategy="spread")
    where = await _where(fleet, cluster)
    assert sorted(where.values()) == ["A", "B", "C"], where
    # each VM runs under its node's own home (the node's label), and exec reaches it
    for name, key in where.items():
        res = await fleet.vm(name).exec(["sh", "-c", "echo $MVM_HOME; echo hi"])
        assert res.code == 0 and res.stdout.decode().split()[-1] == "hi"
        assert (cluster["homes"][key] / "state.db").exists()
    infos = {i.name: i for i in await fleet.list()}
    assert all(i.state == "running" and i.vm_state == "running" for i in infos.values()), infos


async def test_pack_fills_one_node_before_the_next(
    fleet: Fleet, cluster: dict[str, Any], image: Path
) -> None:
    for i in range(3):
        await fleet.start(_req(image, f"p{i}", vcpus=2), strategy="pack")
    where = await _where(fleet, cluster)
    # best fit: the 2-vCPU node C takes one, then a 4-vCPU node takes the next two
    counts = sorted(list(where.values()).count(k) for k in set(where.values()))
    assert counts == [1, 2], where
    assert "C" in where.values()


async def test_labels_constrain_the_node(
    fleet: Fleet, cluster: dict[str, Any], image: Path
) -> None:
    for i in range(2):
        await fleet.start(_req(image, f"l{i}"), labels={"zone": "b"})
    assert set((await _where(fleet, cluster)).values()) <= {"B", "C"}
    await fleet.start(_req(image, "la"), labels={"node": "A"})
    assert (await _where(fleet, cluster))["la"] == "A"


async def test_forwards_listen_on_the_node_address(
    fleet: Fleet, cluster: dict[str, Any], image: Path
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vm = await fleet.start(_req(image, "fwd", ports=(PortMapping(port, 8000),)))
    info = next(i for i in await fleet.list() if i.name == "fwd")
    assert info.ports == (f"{info.node_address}:{port}->8000",)
    assert await vm.address(8000) == f"{info.node_address}:{port}"


async def test_bad_requests_are_one_coded_error_and_start_nothing(
    fleet: Fleet, image: Path
) -> None:
    with pytest.raises(MvmError) as big:
        await fleet.start(_req(image, "huge", vcpus=64))
    assert big.value.code == "E_FLEET_UNSCHEDULABLE"
    assert "needs 64 vCPUs" in big.value.message and "largest node has 4" in big.value.message
    with pytest.raises(MvmError) as nolabel:
        await fleet.start(_req(image, "nowhere"), labels={"zone": "mars"})
    assert nolabel.value.code == "E_FLEET_UNSCHEDULABLE"
    await fleet.start(_req(image, "dup"))
    with pytest.raises(MvmError) as dup:
        await fleet.start(_req(image, "dup"))
    assert dup.value.code == "E_FLEET_NAME_TAKEN"
    assert [i.name for i in await fleet.list()] == ["dup"]


async def test_a_full_fleet_is_e_fleet_full_after_the_timeout_and_keeps_nothing(
    fleet: Fleet, image: Path
) -> None:
    await fleet.start(_req(image, "fills-c", vcpus=2), labels={"node": "C"})
    with pytest.raises(MvmError) as full:
        await fleet.start(_req(image, "no-room"), labels={"node": "C"}, placement_timeout_s=1)
    assert full.value.code == "E_FLEET_FULL" and "no-room" in full.value.message
    assert [i.name for i in await fleet.list()] == ["fills-c"]
    with pytest.raises(ValueError):  # its seat was given back
        ray.get_actor("mvm-seat:no-room:1", namespace="mvm")


def _mvmctl(*args: str, address: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-P", "-m", "mvm.cli", "fleet", args[0], "--address", address, *args[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


async def test_the_cli_starts_lists_execs_and_stops_a_fleet_vm(
    cluster: dict[str, Any], image: Path
) -> None:
    import trio

    address = cluster["cluster"].address

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return await trio.to_thread.run_sync(lambda: _mvmctl(*args, address=address))

    up = await cli("up", str(image), "--name", "clivm", "--backend", "stub", "--label", "node=B")
    assert up.returncode == 0, up.stderr
    assert "clivm: up on node" in up.stderr
    ls = await cli("ls", "--json")
    rows = [json.loads(line) for line in ls.stdout.splitlines()]
    assert [(r["name"], r["state"]) for r in rows] == [("clivm", "running")]
    assert rows[0]["node_id"] == cluster["ids"]["B"]
    ex = await cli("exec", "clivm", "--", "echo", "via-cli")
    assert ex.returncode == 0 and ex.stdout == "via-cli\n", ex.stderr
    nodes = await cli("nodes")
    assert nodes.returncode == 0 and nodes.stdout.count("yes") == 3, nodes.stdout
    dup = await cli("up", str(image), "--name", "clivm", "--backend", "stub")
    assert dup.returncode != 0 and dup.stderr.startswith("error[E_FLEET_NAME_TAKEN]")
    assert len(dup.stderr.strip().splitlines()) == 1
    down = await cli("down", "clivm")
    assert down.returncode == 0, down.stderr
    assert (await cli("ls", "--json")).stdout == ""


def test_the_cli_says_one_line_for_an_unreachable_cluster() -> None:
    out = _mvmctl("nodes", address="127.0.0.1:1")
    assert out.returncode != 0
    assert out.stderr.startswith("error[E_FLEET_UNREACHABLE]: no Ray cluster at 127.0.0.1:1")
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


async def test_unreachable_address_is_one_coded_line_fast() -> None:
    import time

    import trio

    # from a child interpreter: ray.init is per process, and this one is connected already
    t0 = time.monotonic()
    with pytest.raises(MvmError) as err:
        await trio.to_thread.run_sync(_fresh_process_connect)
    assert err.value.code == "E_FLEET_UNREACHABLE"
    assert "ray start --head" in (err.value.hint or "")
    assert time.monotonic() - t0 < 30


def _fresh_process_connect() -> None:
    """Connect from a child interpreter (ray.init is per process) and re-raise its line."""
    import subprocess
    import sys

    code = (
        "import trio\nfrom mvm.fleet import Fleet\nfrom mvm.engine.base.errors import MvmError\n"
        "async def go():\n    async with Fleet.connect('127.0.0.1:1', timeout_s=5):\n        pass\n"
        "try:\n    trio.run(go)\nexcept MvmError as e:\n    print(e.code); print(e.hint)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    raise MvmError("child said", code=lines[0], hint=lines[1] if len(lines) > 1 else None)


async def test_events_come_from_every_node(
    fleet: Fleet, cluster: dict[str, Any], image: Path
) -> None:
    before = {}
    for ev in await fleet.events():
        before[ev.node_id] = max(before.get(ev.node_id, 0), ev.id)
    for i in range(3):
        await fleet.start(_req(image, f"e{i}"), strategy="spread")
    ready = [ev for ev in await fleet.events(after=before) if ev.kind == "vm.ready"]
    assert {ev.vm for ev in ready} == {"e0", "e1", "e2"}
    assert len({ev.node_id for ev in ready}) == 3


async def test_a_dead_host_agent_is_made_again_and_its_vms_keep_running(
    fleet: Fleet, cluster: dict[str, Any], image: Path
) -> None:
    from mvm.fleet.host_agent import agent_name

    vm = await fleet.start(_req(image, "survivor"), labels={"node": "A"})
    ray.kill(ray.get_actor(agent_name(cluster["ids"]["A"]), namespace="mvm"))
    # detached: the VM outlived its agent; the next call makes a new one, which adopts it
    assert (await vm.exec(["echo", "still"])).stdout == b"still\n"
    assert [i.vm_state for i in await fleet.list()] == ["running"]


async def _until(what: Any, timeout: float = 60.0) -> Any:
    import trio

    with trio.fail_after(timeout):
        while not (got := await what()):
            await trio.sleep(0.1)
    return got


async def test_a_lost_node_restarts_its_vm_elsewhere_and_its_return_kills_the_stale_copy(
    fleet: Fleet, cluster: dict[str, Any], image: Path
) -> None:
    """Last in the module: it replaces a node of the shared cluster."""
    vm = await fleet.start(_req(image, "mover"), labels={"zone": "b"}, restart="on-node-loss")
    first = await vm.entry()
    key = cluster["keys"][first.node_id]
    other = "C" if key == "B" else "B"
    assert len(vmm_pids(cluster["homes"][key], "mover")) == 1
    cluster["cluster"].remove_node(cluster["nodes"][key], allow_graceful=False)

    async def moved() -> Any:
        e = await vm.entry()
        return e if e.generation == 2 and e.state == "running" else None

    entry = await _until(moved)
    assert cluster["keys"][entry.node_id] == other
    assert entry.reason is not None and "left the cluster" in entry.reason
    assert (await vm.exec(["echo", "moved"])).stdout == b"moved\n"
    # the lost node's copy outlived its raylet (its shim has its own session)
    assert len(vmm_pids(cluster["homes"][key], "mover")) == 1
    back = cluster["cluster"].add_node(**_node_args(key, cluster["homes"][key]))
    cluster["nodes"][key], cluster["keys"][back.node_id] = back, key

    async def stale_gone() -> bool:
        return not vmm_pids(cluster["homes"][key], "mover")

    await _until(stale_gone)
    assert len(vmm_pids(cluster["homes"][other], "mover")) == 1
    infos = [i for i in await fleet.list() if i.name == "mover"]
    assert len(infos) == 1 and infos[0].node_id == entry.node_id


def test_import_mvm_does_not_import_ray() -> None:
    """The fleet is an extra: the library and the CLI never load Ray on their own."""
    import subprocess
    import sys

    code = "import sys, mvm, mvm.cli.app; print('ray' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_joining_from_a_checkout_does_not_shadow_the_installed_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray puts the driver's cwd on its workers' sys.path: run from a folder holding an
    mvm/ of sources (a checkout), the join happens from / and the cwd comes back."""
    from mvm.fleet.client import _cwd_that_shadows_nothing

    (tmp_path / "mvm").mkdir()
    (tmp_path / "mvm" / "__init__.py").write_text("")
    monkeypatch.chdir(tmp_path)
    with _cwd_that_shadows_nothing():
        assert Path.cwd() == Path("/")
    assert Path.cwd() == tmp_path
    monkeypatch.chdir(tmp_path / "mvm")  # nothing to shadow here: stays
    with _cwd_that_shadows_nothing():
        assert Path.cwd() == tmp_path / "mvm"
