"""Engine: the embeddable entry point.

``async with Engine.open() as engine:`` gives one structured-concurrency scope
that owns the state store, the event bus and a root supervisor. Every VM started
through it (``engine.start``) is a supervised RuntimeVM child: leaving the block,
cancelling it or Ctrl-C tears every VM down in reverse start order. Works under
trio and asyncio (anyio).
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio
import attrs

from mvm.backends.guest.client import AgentClient, ExecResult
from mvm.backends.guest.files import GuestFiles
from mvm.backends.guest.streams import ExecSession
from mvm.backends.registry import get_backend
from mvm.engine.admission.gate import LaunchGate
from mvm.engine.base.errors import (
    AccessDenied,
    BackendUnavailable,
    ConfigError,
    ConflictError,
    NotFoundError,
)
from mvm.engine.base.log import get_logger
from mvm.engine.base.settings import Settings, current_settings, use_settings
from mvm.engine.images.image import Image
from mvm.engine.images.imagespec import ImageSpec
from mvm.engine.request.vmrequest import Mode, PortMapping, VmRequest
from mvm.engine.runtime.events import Event, EventBus
from mvm.engine.runtime.supervisor import RestartPolicy, Supervisor
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm.reconcile import adopt_orphaned, reconcile
from mvm.engine.vm.runtime import DetachVm, RuntimeVM, StopVm
from mvm.engine.vm.snapshots import SnapshotMeta, load_snapshot, take_snapshot

log = get_logger("mvm.engine")

ProgressFn = Callable[[str, float | None], None]
P = ParamSpec("P")
T = TypeVar("T")


class VmHandle:
    """A VM: exec in it, wait for it, stop it. ``Engine.start`` / ``clone`` / ``adopt``
    return one for a VM this engine supervises; ``Engine.vm(name)`` also answers one for
    a VM another process supervises (engine/remote_vm.py), with the same methods."""

    def __init__(self, vm: RuntimeVM) -> None:
        self._vm = vm

    @property
    def name(self) -> str:
        """The VM's name (unique in the store)."""
        return self._vm.request.name

    @property
    def hello(self) -> dict[str, Any]:
        """The guest agent's hello (kernel, agent version, ...); empty before it came."""
        return self._vm.agent.hello if self._vm.agent else {}

    @property
    def boot_seconds(self) -> float | None:
        """Seconds from the start to the agent's hello; None while booting."""
        if self._vm.ready_at is None:
            return None
        return self._vm.ready_at - self._vm.started_at

    @property
    def step_seconds(self) -> dict[str, float]:
        """How long each named boot step took (engine/vm/boot.py): the boot's phases."""
        return dict(self._vm.step_seconds)

    @property
    def console_log(self) -> str | None:
        """The file the guest's serial console is written to (kernel and init lines)."""
        return str(self._vm.handle.plan.console_log) if self._vm.handle else None

    @property
    def pid(self) -> int | None:
        """The VMM's process id; None before it was spawned."""
        return self._vm.handle.pid if self._vm.handle else None

    async def agent(self) -> AgentClient:
        """The guest agent's client (exec, services, logs, files); ``E_AGENT_GONE``
        when the VM has no agent link."""
        if self._vm.agent is None:
            raise NotFoundError(f"VM {self.name} has no agent connection", code="E_AGENT_GONE")
        return await self._vm.agent.client()

    def _accessible(self, what: str) -> None:
        if self._vm.image.sealed:
            raise AccessDenied(
                f"VM {self.name} runs a sealed image: {what} is refused",
                hint="build the image with dev = true for exec/console",
            )

    async def exec(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> ExecResult:
        """Run a command to completion; its output collected (see ``open_exec`` to stream)."""
        self._accessible("exec")
        client = await self.agent()
        return await client.exec(list(argv), stdin=stdin, timeout=timeout, env=env, cwd=cwd)

    @asynccontextmanager
    async def open_exec(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stdin: bool = False,
        pty: bool = False,
    ) -> AsyncIterator[ExecSession]:
        """A streaming exec: ``async for fd, data in proc.output()``, ``await
        proc.write(b)`` / ``close_stdin()`` (with ``stdin=True``), ``kill``; afterwards
        ``proc.exit_code`` / ``proc.exit_signal``."""
        self._accessible("exec")
        client = await self.agent()
        async with client.open_exec(argv, env=env, cwd=cwd, stdin=stdin, pty=pty) as proc:
            yield proc

    @property
    def files(self) -> GuestFiles:
        """``put(local, remote)``, ``get(remote, local)``, ``list(remote)`` in the guest."""
        self._accessible("file copy")
        return GuestFiles(self.agent)

    async def wait(self) -> int | None:
        """Block until the VM exits; its entrypoint's exit status (or the VMM's)."""
        await self._vm.exited.wait()
        return self._vm.exit_code

    @property
    def detached(self) -> bool:
        """True once ``detach`` handed the still-running VM over for adoption."""
        return self._vm.detaching and self._vm.exited.is_set()

    async def detach(self) -> None:
        """Stop supervising the VM here without stopping it (see ``adopt_detached``)."""
        if not self._vm.exited.is_set():
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self._vm.send(DetachVm())
        await self._vm.exited.wait()

    async def stop(self, reason: str = "stopped") -> int | None:
        """Stop the VM (guest sync and power-off, VMM stop, the unwind of its boot);
        its exit status. Stopping a stopped VM only returns it."""
        if not self._vm.exited.is_set():
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
                await self._vm.send(StopVm(reason=reason))
        return await self.wait()


def _in_scope(
    method: Callable[Concatenate[Engine, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[Engine, P], Coroutine[Any, Any, T]]:
    """Run an Engine method under that engine's settings: a caller holding two engines
    (different homes) in one task has only the innermost one installed by ``open``."""

    @functools.wraps(method)
    async def scoped(self: Engine, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with use_settings(self.settings):
            return await method(self, *args, **kwargs)

    return scoped


class Engine:
    """The embeddable engine: one structured-concurrency scope over the state store, the
    event bus and the VMs it supervises. Open it with ``async with Engine.open() as
    engine``; leaving the block stops every VM started through it. Works under trio and
    asyncio. Logs go to the standard-library loggers ``mvm.*`` and stay silent until the
    host app configures logging; nothing is written to stdout or stderr."""

    def __init__(
        self,
        store: StateStore,
        bus: EventBus,
        supervisor: Supervisor,
        settings: Settings | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.settings = settings if settings is not None else current_settings()
        self._sup = supervisor
        self._vms: dict[str, RuntimeVM] = {}
        self._gate = LaunchGate()

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        *,
        home: str | Path | None = None,
        cache: str | Path | None = None,
        settings: Settings | None = None,
        adopt_orphans: bool = True,
    ) -> AsyncIterator[Engine]:
        """Open the engine. Its settings are ``settings`` (default: those the caller's
        edge installed, else the environment), with ``home`` / ``cache`` overriding
        theirs; they are installed for the ``async with`` block and re-installed by
        every method, so two engines with different homes in one process never see
        each other's VMs. Reconcile the store with reality; with ``adopt_orphans``,
        detached VMs whose supervisor died get a fresh one (their VMM kept running)."""
        chosen = settings if settings is not None else current_settings()
        if home is not None:
            chosen = attrs.evolve(chosen, home=Path(home))
        if cache is not None:
            chosen = attrs.evolve(chosen, cache=Path(cache))
        from mvm.engine.event_log import record_events

        bus = EventBus()
        with use_settings(chosen):
            async with StateStore.open() as store:
                await reconcile(store)
                if adopt_orphans:
                    await adopt_orphaned(store)
                # every event is also stored, so other processes (mvmctl events) see it
                async with record_events(bus, store), Supervisor("engine", events=bus) as sup:
                    yield cls(store, bus, sup, chosen)

    def events(self) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """``async with engine.events() as events: async for ev in events`` -- the
        :class:`Event` s this engine publishes from now on (kinds: :class:`EventKind`).
        Events of VMs other processes supervise are in the store
        (``engine.store.list_events``, ``mvmctl events``)."""
        return self.bus.subscribe()

    @_in_scope
    async def build(
        self, target: ImageSpec | str | os.PathLike[str], progress: ProgressFn | None = None
    ) -> Image:
        """Build (or reuse from cache) an image: an ImageSpec, a spec or Workload IR
        ``.json`` path, a built image directory, or a project dir (flake.nix / mvm.toml),
        resolved as ``mvmctl build`` resolves its argument (engine/build_target.py)."""
        from mvm.engine.build_target import build_target

        return await build_target(target, progress)

    @_in_scope
    async def start(self, request: VmRequest, image: Image | None = None) -> VmHandle:
        """Boot a VM as a child of this engine; returns once its agent said hello."""
        return await self._start(request, image)

    @_in_scope
    async def snapshot(self, name: str, snap: str) -> Path:
        """Save the running VM ``name`` (here or detached) as snapshot ``snap``; the VM
        keeps running. Returns the snapshot's directory."""
        meta = await take_snapshot(self.store, name, snap)
        return meta.directory

    @_in_scope
    async def clone(
        self,
        snap: str,
        name: str,
        *,
        ports: Sequence[PortMapping] = (),
        mode: Mode = "attached",
        boot_timeout_s: float = 90.0,
    ) -> VmHandle:
        """Resume snapshot ``snap`` as a new VM ``name`` with its own identity (hostname =
        name, fresh machine-id and RNG seed, own run dir and agent channel); returns
        once the clone's agent confirmed the identity. Clones started concurrently
        (in one task group) restore in parallel."""
        meta = load_snapshot(snap)
        request = VmRequest(
            name=name,
            image_dir=str(meta.image),
            ports=tuple(ports),
            backend=meta.backend,
            mode=mode,
            vcpus=meta.vcpus,
            memory_mib=meta.memory_mib,
            boot_timeout_s=boot_timeout_s,
            net=meta.net,
        )
        return await self._start(request, None, restore=meta)

    async def _start(
        self, request: VmRequest, image: Image | None, *, restore: SnapshotMeta | None = None
    ) -> VmHandle:
        image = image or Image.load(Path(request.image_dir))
        if request.name in self._vms and not self._vms[request.name].exited.is_set():
            raise ConflictError(f"VM {request.name!r} is already running here", code="E_NAME_TAKEN")
        backend = get_backend(request.backend)
        avail = backend.availability()
        if not avail.ok:
            raise BackendUnavailable(f"backend {backend.name} is unavailable: {avail.reason}")
        vm = RuntimeVM(
            request,
            image,
            backend,
            store=self.store,
            bus=self.bus,
            restore=restore,
            gate=self._gate,
            accel=self.settings.accel,  # MVM_ACCEL, checked once at the edge (E_ACCEL)
        )
        await self._sup.start(vm, policy=RestartPolicy(kind="never"))
        self._vms[request.name] = vm
        return VmHandle(vm)

    @_in_scope
    async def adopt(self, rec: VmRecord) -> VmHandle:
        """Supervise a VM whose VMM another engine started; returns once its agent greeted."""
        image = Image.load(Path(rec.image))
        spec = json.loads(rec.spec_json or "{}")
        request = VmRequest(
            name=rec.name,
            image_dir=rec.image,
            ports=tuple(
                PortMapping(p.host_port, p.guest_port, p.host_addr)
                for p in await self.store.list_ports(rec.name)
            ),
            backend=rec.backend,
            mode="detached",
            net=spec.get("net", "none"),
            # what the launching engine was asked for stays true under a new owner
            **{
                k: spec[k] for k in ("health_action", "stop_grace_s", "boot_timeout_s") if k in spec
            },
        )
        vm = RuntimeVM(
            request, image, get_backend(rec.backend), store=self.store, bus=self.bus, adopt_from=rec
        )
        await self._sup.start(vm, policy=RestartPolicy(kind="never"))
        self._vms[rec.name] = vm
        return VmHandle(vm)

    def vm(self, name: str) -> VmHandle:
        """A handle on VM ``name``, whichever process supervises it: this engine's own
        VM, or (any other VM of the store: a detached one, another app's) a handle that
        reaches it through its owner -- exec over the agent mux, wait on its row, stop
        by the one stop path. A name the store does not hold raises ``E_VM_NOT_FOUND``
        when the handle is used."""
        if name in self._vms:
            return VmHandle(self._vms[name])
        from mvm.engine.remote_vm import RemoteVmHandle

        return RemoteVmHandle(name, self.settings)

    @_in_scope
    async def stop(self, name: str) -> int | None:
        """Stop VM ``name`` (here, or through its owner); its exit status."""
        handle = self.vm(name)
        if name not in self._vms:
            return await handle.stop()
        code = await handle.stop()
        await self._sup.stop(f"vm/{name}")
        return code

    @_in_scope
    async def list_vms(self) -> list[VmRecord]:
        """Every VM in the store (after reconciling it), whichever process runs it."""
        await reconcile(self.store)
        return await self.store.list_vms()


def require_name(name: str | None) -> str:
    if not name:
        raise ConfigError("a VM name is required", code="E_VM_NAME")
    return name
