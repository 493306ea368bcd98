"""The fleet registry: a named detached actor (``mvm-fleet-registry``, namespace ``mvm``),
pinned to the head node, that is the fleet-wide truth about VM names.

name -> (node, generation, request, placement, state). Every start goes through it,
so names are unique fleet-wide and a placement sees every seat. A watcher polls the
cluster's nodes: the VMs of a node that is no longer alive become ``lost`` (with the
reason); those whose restart policy is ``on-node-loss`` are started again on another
node under a new generation. A node that (re)appears gets its host agent, whose startup
asks ``sort_out`` which of its VMs are still its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import attrs
import ray

from mvm.engine.base.errors import ConflictError, MvmError, NotFoundError
from mvm.engine.base.log import get_logger
from mvm.engine.request.vmrequest import PortMapping
from mvm.engine.vm.detached import request_from_json, request_to_json
from mvm.fleet.host_agent import REGISTRY_NAME, agent_for
from mvm.fleet.placement import (
    check_feasible,
    cluster_nodes,
    pack_choice,
    release_seat,
    take_seat,
)
from mvm.fleet.records import FleetEntry, FleetNode, Outcome, Placement, failed, unwrap

log = get_logger("mvm.fleet.registry")


def _warn(event: str, **fields: object) -> None:
    """Log from actor methods: Ray pickles an actor class by value, with the globals its
    methods use, and a module-level function travels by reference (a logger would not)."""
    log.warning(event, **fields)


WATCH_S = 0.25


@ray.remote(num_cpus=0, max_restarts=0)
class Registry:
    """The fleet's names, placements and node-loss handling (answers ``Outcome`` s)."""

    def __init__(self) -> None:
        self._entries: dict[str, FleetEntry] = {}
        self._retired: set[str] = set()  # names the fleet ran and no longer runs anywhere
        self._agents: set[str] = set()  # nodes whose agent was made ready
        self._watch: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def _ensure_watch(self) -> None:
        if self._watch is None:
            self._watch = asyncio.get_running_loop().create_task(self._watch_nodes())

    async def nodes(self) -> list[FleetNode]:
        self._ensure_watch()
        return cluster_nodes()

    async def entries(self) -> list[FleetEntry]:
        self._ensure_watch()
        return sorted(self._entries.values(), key=lambda e: e.name)

    async def entry(self, name: str) -> Outcome:
        self._ensure_watch()
        found = self._entries.get(name)
        if found is None:
            return failed(
                NotFoundError(f"no VM named {name!r} in the fleet", code="E_VM_NOT_FOUND")
            )
        return Outcome(found)

    async def start(
        self, name: str, request_json: str, place: Placement, timeout_s: float
    ) -> Outcome:
        """Place and start a VM; its entry once its node's engine said it is ready."""
        self._ensure_watch()
        if name in self._entries:
            held = self._entries[name]
            return failed(
                ConflictError(
                    f"VM {name!r} already is in the fleet ({held.state} on node "
                    f"{(held.node_id or '?')[:8]})",
                    code="E_FLEET_NAME_TAKEN",
                )
            )
        try:
            fits = check_feasible(place, cluster_nodes())
        except MvmError as exc:
            return failed(exc)
        entry = FleetEntry(name=name, request_json=request_json, placement=place)
        self._entries[name] = entry
        try:
            self._entries[name] = await self._place(entry, fits, timeout_s)
        except MvmError as exc:
            self._entries.pop(name, None)
            return failed(exc)
        except BaseException:
            self._entries.pop(name, None)
            raise
        self._retired.discard(name)
        return Outcome(self._entries[name])

    async def _place(
        self, entry: FleetEntry, fits: list[FleetNode], timeout_s: float
    ) -> FleetEntry:
        place = entry.placement
        pinned = None
        if place.strategy == "pack":
            pinned = pack_choice(place, fits, self._used())
        seat_key = f"{entry.name}:{entry.generation}"
        _seat, node_id, address = await take_seat(
            seat_key, place, pinned=pinned, timeout_s=timeout_s
        )
        try:
            request = request_from_json(entry.request_json)
            request = attrs.evolve(
                request,
                mode="detached",
                ports=tuple(PortMapping(p.host_port, p.guest_port, address) for p in request.ports),
            )
            unwrap(await agent_for(node_id).start.remote(request_to_json(request)))
        except BaseException:
            release_seat(seat_key)
            raise
        self._agents.add(node_id)
        return attrs.evolve(
            entry, node_id=node_id, node_address=address, state="running", reason=None
        )

    def _used(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for e in self._entries.values():
            if e.node_id is not None and e.state in ("running", "placing"):
                used[e.node_id] = used.get(e.node_id, 0) + e.placement.vcpus
        return used

    async def forget(self, name: str) -> Outcome:
        """Drop a VM from the fleet (after its node stopped it, or when it was lost)."""
        entry = self._entries.pop(name, None)
        if entry is None:
            return failed(
                NotFoundError(f"no VM named {name!r} in the fleet", code="E_VM_NOT_FOUND")
            )
        release_seat(f"{name}:{entry.generation}")
        self._retired.add(name)
        return Outcome(entry)

    async def sort_out(self, node_id: str, address: str, names: list[str]) -> list[str]:
        """Which of a (re)starting node's running VMs it keeps. Killed: those the fleet
        now runs on another node, or ran and stopped. Kept: its own; a ``lost`` VM that
        nobody restarted (it is this node's again); names the fleet never ran (a local
        ``mvmctl up`` on the same home is not the fleet's to kill)."""
        keep = []
        for name in names:
            entry = self._entries.get(name)
            if entry is None:
                if name not in self._retired:
                    keep.append(name)
            elif entry.node_id == node_id:
                keep.append(name)
            elif entry.state == "lost":
                self._entries[name] = attrs.evolve(
                    entry, node_id=node_id, node_address=address, state="running", reason=None
                )
                keep.append(name)
        self._agents.add(node_id)
        return keep

    async def _watch_nodes(self) -> None:
        while True:
            with contextlib.suppress(Exception):
                self._check(cluster_nodes())
            await asyncio.sleep(WATCH_S)

    def _check(self, nodes: list[FleetNode]) -> None:
        alive = {n.node_id for n in nodes if n.alive}
        for name, entry in list(self._entries.items()):
            if entry.state != "running" or entry.node_id in alive:
                continue
            reason = f"node {(entry.node_id or '?')[:8]} ({entry.node_address}) left the cluster"
            self._entries[name] = attrs.evolve(entry, state="lost", reason=reason)
            _warn("fleet.vm_lost", vm=name, reason=reason)
            if entry.placement.restart == "on-node-loss":
                self._spawn(self._restart(name, reason))
        for node_id in alive - self._agents:
            self._agents.add(node_id)
            self._spawn(self._greet(node_id))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _greet(self, node_id: str) -> None:
        """Make a new node's agent: its startup reconciles the node with the fleet."""
        try:
            await agent_for(node_id).ready.remote()
        except Exception as exc:  # a node that died again meanwhile: the next poll retries
            _warn("fleet.agent_failed", node=node_id, error=str(exc))
            self._agents.discard(node_id)

    async def _restart(self, name: str, reason: str) -> None:
        entry = self._entries[name]
        release_seat(f"{name}:{entry.generation}")
        fresh = attrs.evolve(entry, generation=entry.generation + 1, node_id=None, state="placing")
        self._entries[name] = fresh
        try:
            fits = check_feasible(entry.placement, cluster_nodes())
            placed = await self._place(fresh, fits, 120.0)
            self._entries[name] = attrs.evolve(placed, reason=f"restarted: {reason}")
            _warn("fleet.vm_restarted", vm=name, node=self._entries[name].node_id)
        except MvmError as exc:
            self._entries[name] = attrs.evolve(
                fresh, state="lost", reason=f"{reason}; the restart failed: {exc.one_line()}"
            )


def _unknown(name: str) -> NotFoundError:
    return NotFoundError(f"no VM named {name!r} in the fleet", code="E_VM_NOT_FOUND")


def registry_handle() -> Any:
    """The fleet's registry, created on the head node if there is none yet."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    head = next(
        n["NodeID"]
        for n in ray.nodes()  # type: ignore[no-untyped-call]
        if n.get("Alive") and "node:__internal_head__" in n.get("Resources", {})
    )
    return Registry.options(  # type: ignore[attr-defined]
        name=REGISTRY_NAME,
        namespace="mvm",
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False),
    ).remote()
