"""Placement through Ray resources: a VM is a small "seat" actor that reserves
``{mvm_vcpus: v, mvm_memory_mib: m}`` on one node, so Ray's scheduler does the placing.

Nodes advertise ``mvm_host: 1``, ``mvm_vcpus: N`` and ``mvm_memory_mib: M``
(``ray start --resources``) and may carry labels (``ray start --labels``), which a
request can demand. ``spread`` is Ray's SPREAD strategy. ``pack`` is best fit: the
fullest node (by the seats the registry knows) that still has room, pinned by its
``ray.io/node-id`` label, because Ray's DEFAULT policy spreads once a node is half
full. A request no node could ever hold is refused here, before anything is made
(E_FLEET_UNSCHEDULABLE), instead of waiting forever as Ray would; one that only
lacks room right now waits ``timeout_s`` for a seat (E_FLEET_FULL).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

import ray

from mvm.engine.base.errors import ConfigError, ConflictError
from mvm.engine.request.vmrequest import VmRequest
from mvm.fleet.records import FleetNode, Placement, Restart, Strategy

NAMESPACE = "mvm"
NODE_ID_LABEL = "ray.io/node-id"
# What a request that names no vCPUs / memory reserves (the demo image's own sizes).
DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MIB = 256


def placement_for(
    request: VmRequest,
    strategy: Strategy = "spread",
    labels: Mapping[str, str] | None = None,
    restart: Restart = "never",
) -> Placement:
    if strategy not in ("spread", "pack"):
        raise ConfigError(
            f"unknown placement strategy {strategy!r}", code="E_CONFIG", hint="spread or pack"
        )
    if restart not in ("never", "on-node-loss"):
        raise ConfigError(
            f"unknown restart policy {restart!r}", code="E_CONFIG", hint="never or on-node-loss"
        )
    return Placement(
        vcpus=request.vcpus or DEFAULT_VCPUS,
        memory_mib=request.memory_mib or DEFAULT_MEMORY_MIB,
        strategy=strategy,
        labels=tuple(sorted((labels or {}).items())),
        restart=restart,
    )


def cluster_nodes() -> list[FleetNode]:
    """The cluster's mvm hosts now (one GCS call)."""
    return mvm_nodes(ray.nodes())  # type: ignore[no-untyped-call]


def node_ip() -> str:
    """The address of the node this worker runs on (where its forwards listen)."""
    ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return ip


def mvm_nodes(raw: Iterable[Mapping[str, Any]]) -> list[FleetNode]:
    """The mvm hosts among ``ray.nodes()`` (those advertising ``mvm_host``)."""
    out = []
    for n in raw:
        res = n.get("Resources") or {}
        if not res.get("mvm_host"):
            continue
        labels = {k: v for k, v in (n.get("Labels") or {}).items() if k != NODE_ID_LABEL}
        out.append(
            FleetNode(
                node_id=n["NodeID"],
                address=n.get("NodeManagerAddress", ""),
                alive=bool(n.get("Alive")),
                vcpus=int(res.get("mvm_vcpus", 0)),
                memory_mib=int(res.get("mvm_memory_mib", 0)),
                labels=tuple(sorted(labels.items())),
            )
        )
    return out


def check_feasible(place: Placement, nodes: list[FleetNode]) -> list[FleetNode]:
    """The live nodes that could ever hold the request; E_FLEET_UNSCHEDULABLE if none."""
    alive = [n for n in nodes if n.alive]
    if not alive:
        raise ConfigError(
            "the Ray cluster has no live mvm host",
            code="E_FLEET_UNSCHEDULABLE",
            hint="start nodes with ray start --resources='{\"mvm_host\": 1, ...}'",
        )
    want = dict(place.labels)
    matching = [n for n in alive if all(dict(n.labels).get(k) == v for k, v in want.items())]
    if not matching:
        shown = ",".join(f"{k}={v}" for k, v in place.labels)
        raise ConfigError(
            f"no live mvm host has the labels {shown}",
            code="E_FLEET_UNSCHEDULABLE",
            hint="see the nodes' labels: mvmctl fleet nodes",
        )
    fits = [n for n in matching if n.vcpus >= place.vcpus and n.memory_mib >= place.memory_mib]
    if not fits:
        most_cpu = max(n.vcpus for n in matching)
        most_mem = max(n.memory_mib for n in matching)
        raise ConfigError(
            f"needs {place.vcpus} vCPUs and {place.memory_mib} MiB; the largest node has "
            f"{most_cpu} vCPUs and {most_mem} MiB",
            code="E_FLEET_UNSCHEDULABLE",
        )
    return fits


def pack_choice(place: Placement, fits: list[FleetNode], used: Mapping[str, int]) -> str:
    """Best fit: the node with the most vCPUs in use that still has room for ``place``
    (ties: the smaller node); the first candidate when all are full (its seat waits)."""
    room = [n for n in fits if n.vcpus - used.get(n.node_id, 0) >= place.vcpus]
    ranked = sorted(room or fits, key=lambda n: (-used.get(n.node_id, 0), n.vcpus, n.node_id))
    return ranked[0].node_id


@ray.remote(num_cpus=0)
class Seat:
    """Holds a VM's reservation on its node for as long as the VM is in the fleet."""

    def where(self) -> tuple[str, str]:
        ctx = ray.get_runtime_context()
        return ctx.get_node_id(), node_ip()


def seat_name(name: str) -> str:
    return f"mvm-seat:{name}"


async def take_seat(
    name: str, place: Placement, *, pinned: str | None, timeout_s: float
) -> tuple[Any, str, str]:
    """Create the VM's seat and wait until Ray placed it: (seat, node id, node address)."""
    selector = dict(place.labels)
    if pinned is not None:
        selector[NODE_ID_LABEL] = pinned
    options: dict[str, Any] = {
        "name": seat_name(name),
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "resources": {"mvm_vcpus": place.vcpus, "mvm_memory_mib": place.memory_mib},
        "max_restarts": 0,
    }
    if selector:
        options["label_selector"] = selector
    if place.strategy == "spread" and pinned is None:
        options["scheduling_strategy"] = "SPREAD"
    seat = Seat.options(**options).remote()  # type: ignore[attr-defined]
    try:
        node_id, address = await asyncio.wait_for(seat.where.remote(), timeout_s)
        # the node's own address as the cluster knows it (a worker may see another)
        address = next((n.address for n in cluster_nodes() if n.node_id == node_id), address)
    except TimeoutError:
        ray.kill(seat)
        vm = name.rsplit(":", 1)[0]  # the seat's key is NAME:GENERATION
        raise ConflictError(
            f"no node has room for {vm} ({place.vcpus} vCPUs, {place.memory_mib} MiB) "
            f"within {timeout_s:g} s",
            code="E_FLEET_FULL",
        ) from None
    except BaseException:
        ray.kill(seat)
        raise
    return seat, node_id, address


def release_seat(name: str) -> None:
    """Give the VM's reservation back (a seat already gone is fine)."""
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(seat_name(name), namespace=NAMESPACE))
