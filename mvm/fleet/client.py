"""``Fleet``: the Engine's shape over a Ray cluster of mvm hosts.

``async with Fleet.connect(address) as fleet`` joins the cluster (``address`` None:
Ray's own choice, ``RAY_ADDRESS`` or the local cluster) in a bounded time, so a wrong
address is one coded line (E_FLEET_UNREACHABLE), not a minute of Ray retrying. Every
call is a Ray call run in a worker thread, so the client works under asyncio and trio.
"""

from __future__ import annotations

import builtins
import logging
import os
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import ray

from mvm.backends.guest.client import ExecResult
from mvm.engine.base.errors import (
    AgentError,
    BackendError,
    BackendUnavailable,
    ConflictError,
    MvmError,
    NotFoundError,
)
from mvm.engine.request.vmrequest import VmRequest
from mvm.engine.vm.detached import request_to_json
from mvm.fleet.host_agent import agent_for, agent_name
from mvm.fleet.placement import NAMESPACE, placement_for
from mvm.fleet.records import (
    FleetEntry,
    FleetEvent,
    FleetNode,
    FleetVmInfo,
    Restart,
    Strategy,
    unwrap,
)
from mvm.fleet.registry import registry_handle

CONNECT_TIMEOUT_S = 10.0


async def _get(ref: Any) -> Any:
    """A Ray call's value; an agent that died under the call (its node left) is coded."""
    try:
        return await anyio.to_thread.run_sync(ray.get, ref)
    except (ray.exceptions.ActorDiedError, ray.exceptions.ActorUnavailableError) as exc:
        raise BackendError(
            f"the fleet actor serving this call is gone: {str(exc).splitlines()[0]}",
            code="E_FLEET_NODE_LOST",
        ) from None


class FleetVm:
    """A VM of the fleet, wherever it runs now (each call asks the registry where)."""

    def __init__(self, fleet: Fleet, name: str) -> None:
        self._fleet = fleet
        self.name = name

    async def entry(self) -> FleetEntry:
        """The registry's entry: node, address, state (``lost`` with its reason), generation."""
        entry: FleetEntry = unwrap(await _get(self._fleet.registry.entry.remote(self.name)))
        return entry

    async def _agent(self) -> Any:
        entry = await self.entry()
        if entry.state != "running" or entry.node_id is None:
            why = f"VM {self.name} is {entry.state}" + (f": {entry.reason}" if entry.reason else "")
            if entry.state == "lost":
                raise BackendError(why, code="E_FLEET_NODE_LOST")
            raise ConflictError(why, code="E_VM_NOT_RUNNING")
        return agent_for(entry.node_id)  # made again (reconciling first) if it died

    async def address(self, guest_port: int) -> str:
        """``node-address:port`` where the VM's forward of ``guest_port`` listens."""
        for info in await self._fleet.list():
            if info.name == self.name:
                for port in info.ports:
                    where, guest = port.rsplit("->", 1)
                    if int(guest) == guest_port:
                        return where
        raise NotFoundError(
            f"VM {self.name} forwards no port to guest port {guest_port}", code="E_VM_NOT_FOUND"
        )

    async def exec(
        self, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float | None = None
    ) -> ExecResult:
        agent = await self._agent()
        code, sig, out, err = unwrap(
            await _get(agent.exec.remote(self.name, list(argv), stdin, timeout))
        )
        return ExecResult(code=code, signal=sig, stdout=out, stderr=err)

    async def put_file(self, remote: str, data: bytes) -> None:
        """Write a small file (``data`` travels in the call) into the guest."""
        agent = await self._agent()
        res = unwrap(await _get(agent.put_file.remote(self.name, remote, data)))
        if res[0] != 0:
            raise AgentError(
                f"writing {remote} in {self.name} failed: {res[3].decode()!r}", code="E_EXEC"
            )

    async def get_file(self, remote: str) -> bytes:
        agent = await self._agent()
        code, _sig, out, err = unwrap(await _get(agent.get_file.remote(self.name, remote)))
        if code != 0:
            raise AgentError(
                f"reading {remote} in {self.name} failed: {err.decode()!r}", code="E_EXEC"
            )
        data: bytes = out
        return data

    async def logs(self, tail: int = 100) -> list[str]:
        """The last ``tail`` lines of the VM's console on its node."""
        agent = await self._agent()
        lines: list[str] = unwrap(await _get(agent.logs.remote(self.name, tail)))
        return lines

    async def stop(self) -> int | None:
        """Stop the VM on its node (a lost VM is only forgotten) and free its name."""
        entry = await self.entry()
        code: int | None = None
        if entry.state == "running" and entry.node_id is not None:
            agent = agent_for(entry.node_id)
            code = unwrap(await _get(agent.stop.remote(self.name)))
        unwrap(await _get(self._fleet.registry.forget.remote(self.name)))
        return code


class Fleet:
    """The fleet client: start, vm(name), list, events, nodes."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    @classmethod
    @asynccontextmanager
    async def connect(
        cls, address: str | None = None, *, timeout_s: float = CONNECT_TIMEOUT_S
    ) -> AsyncIterator[Fleet]:
        """Join the Ray cluster at ``address`` (``host:port``, ``ray://host:port``, "auto";
        None: ``RAY_ADDRESS``, else the local cluster) and find or make the registry."""
        owned = not ray.is_initialized()
        if owned:
            await _join(address or "auto", timeout_s)
        try:
            registry = await anyio.to_thread.run_sync(registry_handle)
            yield cls(registry)
        finally:
            if owned:
                await anyio.to_thread.run_sync(ray.shutdown)

    async def start(
        self,
        request: VmRequest,
        *,
        strategy: Strategy = "spread",
        labels: Mapping[str, str] | None = None,
        restart: Restart = "never",
        placement_timeout_s: float = 30.0,
    ) -> FleetVm:
        """Place the VM (Ray resources; ``labels`` the node must have) and start it
        detached on its node; returns once its agent said hello. Forwards listen on the
        node's address. Refused before anything starts: a name the fleet already runs
        (E_FLEET_NAME_TAKEN), a request no node can hold (E_FLEET_UNSCHEDULABLE)."""
        place = placement_for(request, strategy, labels, restart)
        ref = self.registry.start.remote(
            request.name, request_to_json(request), place, placement_timeout_s
        )
        unwrap(await _get(ref))
        return FleetVm(self, request.name)

    def vm(self, name: str) -> FleetVm:
        return FleetVm(self, name)

    async def nodes(self) -> list[FleetNode]:
        nodes: list[FleetNode] = await _get(self.registry.nodes.remote())
        return nodes

    async def _agents(self) -> dict[str, Any]:
        return {
            n.node_id: ray.get_actor(agent_name(n.node_id), namespace=NAMESPACE)
            for n in await self.nodes()
            if n.alive and _has_agent(n.node_id)
        }

    async def list(self) -> list[FleetVmInfo]:
        """Every VM of the fleet, with its node, the node engine's state and forwards."""
        entries: list[FleetEntry] = await _get(self.registry.entries.remote())
        rows: dict[tuple[str, str], tuple[Any, tuple[str, ...]]] = {}
        for node_id, agent in (await self._agents()).items():
            try:
                for rec, ports in unwrap(await _get(agent.list.remote())):
                    rows[(node_id, rec.name)] = (rec, ports)
            except (MvmError, ray.exceptions.RayError):
                continue  # a node going away: its VMs show the registry's view
        out = []
        for e in entries:
            rec, ports = rows.get((e.node_id or "", e.name), (None, ()))
            out.append(
                FleetVmInfo(
                    name=e.name,
                    node_id=e.node_id,
                    node_address=e.node_address,
                    state=e.state,
                    generation=e.generation,
                    reason=e.reason,
                    vm_state=rec.state if rec is not None else None,
                    pid=rec.pid if rec is not None else None,
                    backend=rec.backend if rec is not None else None,
                    ports=ports,
                )
            )
        return out

    async def events(
        self, after: Mapping[str, int] | None = None, limit: int = 1000
    ) -> builtins.list[FleetEvent]:
        """Every node's stored events (after each node's id in ``after``), by time."""
        out: builtins.list[FleetEvent] = []
        for node_id, agent in (await self._agents()).items():
            start = (after or {}).get(node_id)
            try:
                out.extend(unwrap(await _get(agent.events.remote(start, limit))))
            except (MvmError, ray.exceptions.RayError):
                continue
        return sorted(out, key=lambda ev: (ev.ts, ev.node_id, ev.id))


def _has_agent(node_id: str) -> bool:
    try:
        ray.get_actor(agent_name(node_id), namespace=NAMESPACE)
    except ValueError:
        return False
    return True


def _unreachable(address: str, why: str) -> BackendUnavailable:
    return BackendUnavailable(
        f"no Ray cluster at {address}: {why}",
        code="E_FLEET_UNREACHABLE",
        hint='start one with: ray start --head --resources=\'{"mvm_host": 1, '
        '"mvm_vcpus": 4, "mvm_memory_mib": 4096}\', or fix --address / RAY_ADDRESS',
    )


@contextmanager
def _cwd_that_shadows_nothing() -> Iterator[None]:
    """Ray puts the driver's working directory first on its workers' ``sys.path``: run
    from a checkout of mvm (as the README's ``.venv/bin/mvmctl`` is), the workers would
    import the sources' ``mvm/`` instead of the installed package and every fleet actor
    would fail to start. Join from ``/`` then (only then: it is the process's cwd)."""
    here = Path.cwd()
    installed = Path(__file__).resolve().parents[1]
    if not (here / "mvm" / "__init__.py").is_file() or (here / "mvm").resolve() == installed:
        yield
        return
    os.chdir("/")
    try:
        yield
    finally:
        os.chdir(here)


async def _join(address: str, timeout_s: float) -> None:
    """``ray.init`` bounded: a TCP probe of an explicit ``host:port`` first (fast
    refusal), then the init itself in a thread abandoned after ``timeout_s``."""
    hostport = address.split("://", 1)[-1]
    if address != "auto" and ":" in hostport:
        host, _, port = hostport.rpartition(":")
        try:
            with anyio.fail_after(min(timeout_s, 3.0)):
                stream = await anyio.connect_tcp(host, int(port))
                await stream.aclose()
        except (OSError, TimeoutError, ValueError) as exc:
            raise _unreachable(address, str(exc) or "no answer") from None

    def init() -> None:
        with _cwd_that_shadows_nothing():
            ray.init(
                address=address,
                namespace=NAMESPACE,
                log_to_driver=False,
                logging_level=logging.ERROR,
            )

    try:
        with anyio.fail_after(timeout_s):
            await anyio.to_thread.run_sync(init, abandon_on_cancel=True)
    except TimeoutError:
        raise _unreachable(address, f"ray.init gave no answer within {timeout_s:g} s") from None
    except ConnectionError as exc:
        raise _unreachable(address, str(exc).splitlines()[0] if str(exc) else "refused") from None
