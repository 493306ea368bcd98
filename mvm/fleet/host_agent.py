"""The host agent: one Ray async actor per mvm node, hosting that node's Engine.

It is pinned to its node (NodeAffinity, soft=False) and named ``mvm-host:<node id>``
in namespace ``mvm``. Its lifetime is *detached*: the VMs it starts are detached too
(each has its own shim, in its own session), so no client's exit ends them, and the
agent must outlive the client to keep serving them; the registry re-creates it when it
is gone. The engine (``Engine.open(home=...)``, the node's ``mvm.home`` label, else the
normal settings) is opened once at startup to reconcile; after that every call opens
its own StateStore, as each mvmctl command does: the engine would supervise nothing
here, since every VM is detached, with its own shim and engine.

On startup it reconciles BEFORE adopting: VMs of its store that the registry says now
live on another node (or ran and stopped) have their supervisor and VMM killed and their
rows removed, so a node that comes back after the fleet replaced its VMs runs no
duplicate and leaves no orphan; the rest are adopted (new shims where theirs died).
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mvm.engine.base.errors import MvmError, NotFoundError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import vm_dir
from mvm.engine.base.process import kill_verified, wait_gone
from mvm.engine.base.settings import Settings, use_settings
from mvm.engine.engine import Engine
from mvm.engine.remote_vm import RemoteVmHandle
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm.detached import remove_vm, request_from_json, start_detached, stop_vm_record
from mvm.engine.vm.owner import Owner
from mvm.engine.vm.reconcile import adopt_orphaned, reconcile, settle
from mvm.fleet.placement import NAMESPACE, cluster_nodes, node_ip
from mvm.fleet.records import FleetEvent, Outcome, failed

log = get_logger("mvm.fleet.host")


def _warn(event: str, **fields: object) -> None:
    """Log from actor methods: Ray pickles an actor class by value, with the globals its
    methods use, and a module-level function travels by reference (a logger would not)."""
    log.warning(event, **fields)


REGISTRY_NAME = "mvm-fleet-registry"


def agent_name(node_id: str) -> str:
    return f"mvm-host:{node_id}"


@ray.remote(num_cpus=0, max_restarts=0)
class HostAgent:
    """Serves one node's engine to the fleet (every method answers an ``Outcome``)."""

    def __init__(self) -> None:
        ctx = ray.get_runtime_context()
        self.node_id = ctx.get_node_id()
        here = [n.address for n in cluster_nodes() if n.node_id == self.node_id]
        self.address = here[0] if here else node_ip()
        home: Any = (ctx.get_node_labels() or {}).get("mvm.home")
        self.home: str | None = home[0] if isinstance(home, list) else home
        self._settings: Settings | None = None
        self._failure: MvmError | None = None
        self._startup: asyncio.Task[None] | None = None

    async def _open(self) -> None:
        """The node's engine, opened once to reconcile the store with reality, then the
        fleet's sort-out, then adoption; its settings (the node's home) serve every call."""
        try:
            async with Engine.open(home=self.home, adopt_orphans=False) as engine:
                settings = engine.settings
            with use_settings(settings):
                await self._reconcile()
            self._settings = settings
        except MvmError as exc:
            self._failure = exc

    async def _ready(self) -> Settings:
        if self._startup is None:
            self._startup = asyncio.get_running_loop().create_task(self._open())
        await asyncio.shield(self._startup)
        if self._failure is not None:
            raise self._failure
        assert self._settings is not None
        return self._settings

    async def _reconcile(self) -> None:
        registry = ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE)
        async with StateStore.open() as store:
            recs = [r for r in await store.list_vms() if r.state == "running"]
            keep = set(
                await registry.sort_out.remote(self.node_id, self.address, [r.name for r in recs])
            )
            for rec in recs:
                if rec.name not in keep:
                    await _kill_replaced(store, rec)
            await adopt_orphaned(store)

    async def ready(self) -> Outcome:
        """Open the engine (and reconcile) if not yet done; where this agent is."""
        try:
            settings = await self._ready()
        except MvmError as exc:
            return failed(exc)
        return Outcome(
            {"node_id": self.node_id, "address": self.address, "home": str(settings.home)}
        )

    async def start(self, request_json: str) -> Outcome:
        """Start a detached VM from a VmRequest's JSON; its row once its agent said hello."""
        try:
            settings = await self._ready()
            request = request_from_json(request_json)
            with use_settings(settings):
                await start_detached(request)
                async with StateStore.open() as store:
                    return Outcome(await _row(store, request.name))
        except MvmError as exc:
            return failed(exc)

    async def stop(self, name: str) -> Outcome:
        """The one stop path (its shim tears it down), then the row is forgotten."""
        try:
            settings = await self._ready()
            with use_settings(settings):
                async with StateStore.open() as store:
                    final = await stop_vm_record(store, await _row(store, name))
                return Outcome(final.exit_code)
        except MvmError as exc:
            return failed(exc)

    async def exec(
        self, name: str, argv: list[str], stdin: bytes | None, timeout: float | None
    ) -> Outcome:
        try:
            settings = await self._ready()
            res = await RemoteVmHandle(name, settings).exec(argv, stdin=stdin, timeout=timeout)
            return Outcome((res.code, res.signal, res.stdout, res.stderr))
        except MvmError as exc:
            return failed(exc)

    async def put_file(self, name: str, remote: str, data: bytes) -> Outcome:
        """A small file into the guest (its bytes travel in the call)."""
        return await self.exec(name, ["sh", "-c", 'cat > "$1"', "sh", remote], data, 60.0)

    async def get_file(self, name: str, remote: str) -> Outcome:
        return await self.exec(name, ["cat", remote], None, 60.0)

    async def logs(self, name: str, tail: int) -> Outcome:
        """The last ``tail`` lines of the VM's serial console (kernel, init, app)."""
        try:
            settings = await self._ready()
            with use_settings(settings):
                path = vm_dir(name) / "console.log"
                async with StateStore.open() as store:
                    rec = await store.get_vm(name)
                if rec is None and not path.exists():
                    raise NotFoundError(f"no VM named {name!r} on this node", code="E_VM_NOT_FOUND")
                text = path.read_text(errors="replace") if path.exists() else ""
            return Outcome(text.splitlines()[-tail:] if tail > 0 else [])
        except MvmError as exc:
            return failed(exc)

    async def list(self) -> Outcome:
        """Every VM row of this node's engine, with its forwards as ``addr:port->guest``."""
        try:
            settings = await self._ready()
            with use_settings(settings):
                out = []
                async with StateStore.open() as store:
                    await reconcile(store)
                    for rec in await store.list_vms():
                        ports = tuple(str_port(p) for p in await store.list_ports(rec.name))
                        out.append((rec, ports))
            return Outcome(out)
        except MvmError as exc:
            return failed(exc)

    async def events(self, after: int | None, limit: int) -> Outcome:
        try:
            settings = await self._ready()
            with use_settings(settings):
                async with StateStore.open() as store:
                    rows = await store.list_events(after=after, limit=limit, oldest=True)
            return Outcome(
                [FleetEvent(self.node_id, r.id, r.ts, r.kind, r.vm, dict(r.data)) for r in rows]
            )
        except MvmError as exc:
            return failed(exc)


def str_port(p: Any) -> str:
    return f"{p.host_addr}:{p.host_port}->{p.guest_port}"


async def _row(store: StateStore, name: str) -> VmRecord:
    rec = await store.get_vm(name)
    if rec is None:
        raise NotFoundError(f"no VM named {name!r} on this node", code="E_VM_NOT_FOUND")
    return rec


async def _kill_replaced(store: StateStore, rec: VmRecord) -> None:
    """The fleet runs this VM elsewhere now: kill its shim and VMM, forget its row."""
    owner = Owner.parse(rec.owner)
    if owner is not None and owner.alive and not owner.is_me:
        kill_verified(owner.pid, owner.start_time, signal.SIGKILL)
        await wait_gone(owner.pid, owner.start_time, 5.0)
    fresh = await store.get_vm(rec.name) or rec
    settled = await settle(store, fresh, reason="replaced by the fleet on another node")
    await remove_vm(store, settled or fresh)
    log.warning("fleet.replaced_vm_killed", vm=rec.name)


def agent_for(node_id: str) -> Any:
    """The node's host agent, created (pinned to the node, detached) if it is not there."""
    return HostAgent.options(  # type: ignore[attr-defined]
        name=agent_name(node_id),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
    ).remote()
