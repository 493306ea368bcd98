"""RuntimeVM: one running microVM and everything attached to it, as an actor.

Its life is a list of named steps (engine/vm/boot.py: COLD_START, CLONE, ADOPT) run
over one exit stack; then it serves its inbox until the VM ends (the VMM exits, a
``StopVm``, a ``DetachVm``, or its scope is cancelled); then the stack unwinds, each
undo shielded, in reverse. Nothing is undone by hand anywhere else.

The one stop path (DESIGN §3): ``StopVm`` asks the guest to sync and power off
(through this VM's own agent link, so the link closing is expected, not a failure),
waits for the VMM to exit within ``stop_grace_s``, and the unwind stops the VMM the
hard way if it did not. ``Engine.stop``, the shim's SIGTERM (``mvmctl down``) and
Ctrl-C of an attached run all send ``StopVm``.
"""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any, Literal

import anyio
import anyio.abc
import attrs
import structlog

from mvm.actors.agent_connection import AgentConnection
from mvm.actors.health_check import HealthState
from mvm.backends.abc.types import (
    Accel,
    AgentEndpoint,
    Backend,
    Drive,
    LaunchPlan,
    NetDevice,
    VmmHandle,
    VmSpec,
)
from mvm.engine.admission.gate import LaunchGate
from mvm.engine.admission.plans import ExecutionPlan
from mvm.engine.base.errors import BackendError, MvmError, error_leaves
from mvm.engine.base.paths import vm_dir, write_private
from mvm.engine.images.image import Image
from mvm.engine.request.envvars import env_kernel_arg
from mvm.engine.request.vmrequest import VmRequest
from mvm.engine.request.volumes import kernel_arg
from mvm.engine.runtime.actor import Actor
from mvm.engine.runtime.events import Event, EventBus
from mvm.engine.runtime.supervisor import Supervisor
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm import boot, network
from mvm.engine.vm.exit_status import console_tail, guest_exit_code, vmm_exit_reason
from mvm.engine.vm.snapshots import SnapshotMeta
from mvm.engine.vm.steps import Steps, fault_step, run_steps

log = structlog.get_logger("mvm.vm")

State = Literal["starting", "running", "stopping", "exited", "failed"]


@attrs.frozen
class StopVm:
    """Ask the VM to shut down (the actor then ends and tears down)."""

    reason: str = "stopped"


@attrs.frozen
class RestartVm:
    """Stop the VM and boot it again under the same name, ports, disks and lease."""

    reason: str = "requested"


@attrs.define
class RestartBudget:
    """At most ``max_restarts`` within ``window_s``: a VM that keeps turning unhealthy
    is stopped (with that reason) instead of being restarted forever."""

    max_restarts: int = 3
    window_s: float = 300.0
    _times: list[float] = attrs.field(factory=list)

    def allow(self) -> bool:
        now = time.monotonic()
        self._times = [t for t in self._times if now - t < self.window_s]
        if len(self._times) >= self.max_restarts:
            return False
        self._times.append(now)
        return True

    @property
    def spent(self) -> str:
        return f"restart budget spent ({self.max_restarts} in {self.window_s:.0f} s)"


@attrs.frozen
class DetachVm:
    """Let go of the VM without stopping it, so that another engine can adopt it."""


def first_error(exc: BaseException) -> BaseException:
    """The first MvmError inside task-group wrapping, else the exception itself."""
    leaves = error_leaves(exc)
    return next((e for e in leaves if isinstance(e, MvmError)), leaves[0] if leaves else exc)


class RegreetEndpoint:
    """Dials like ``inner``; the re-greet itself is AgentClient.connect's.

    A restored guest may believe its source's host is still attached (the
    virtio-serial port was open when the snapshot was taken), so it would never say
    hello on its own. The client sends a host ``hello`` on every dial, which makes the
    agent drop that stale session and greet now."""

    def __init__(self, inner: AgentEndpoint) -> None:
        self._inner = inner

    async def connect(self) -> anyio.abc.ByteStream:
        return await self._inner.connect()


class RuntimeVM(Actor[StopVm | DetachVm | RestartVm]):
    def __init__(
        self,
        request: VmRequest,
        image: Image,
        backend: Backend,
        *,
        store: StateStore,
        bus: EventBus,
        adopt_from: VmRecord | None = None,
        restore: SnapshotMeta | None = None,
        gate: LaunchGate | None = None,
        accel: Accel = Accel.AUTO,
    ) -> None:
        super().__init__(f"vm/{request.name}")
        self.request = request
        self.image = image
        self.backend = backend
        self.store = store
        self.bus = bus
        self.gate = gate  # None only for adoption: that VMM was admitted when it launched
        self.accel = accel
        self.adopt_from = adopt_from
        self.restore = restore  # a clone: resume this snapshot instead of booting
        self.steps: Steps[RuntimeVM] = (
            boot.ADOPT if adopt_from is not None else boot.CLONE if restore else boot.COLD_START
        )
        self.run_dir = vm_dir(request.name)
        # what the steps acquire, in order
        self.listeners: list[anyio.abc.Listener[anyio.abc.SocketStream]] = []
        self.drives: list[Drive] = []
        self.lease: network.Lease | None = None
        self.plan: LaunchPlan | None = None
        self.exec_plan: ExecutionPlan | None = None
        self.handle: VmmHandle | None = None
        self.supervisor: Supervisor | None = None
        self.agent: AgentConnection | None = None
        self.stack = contextlib.AsyncExitStack()
        # how it is going
        self.state: State = "starting"
        self.step: str | None = None
        self.step_seconds: dict[str, float] = {}  # the boot's phases, by step name
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.health: dict[str, HealthState] = {}
        self.failure: BaseException | None = None
        self.stop_reason: str | None = None
        self.exit_code: int | None = None
        self.exit_reason: str | None = None
        self.detaching = False
        self.restarts = 0
        self.ending: Literal["stop", "detach", "restart"] = "stop"
        self._restart_budget = RestartBudget()
        self.vmm_exited = anyio.Event()
        self.exited = anyio.Event()
        self._watch_scope: anyio.CancelScope | None = None

    # -- the life --------------------------------------------------------------------------

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The head of the step list (up to ``RESTART_FROM``) runs once on the outer
        stack; the tail (the VMM and everything on it) on an inner one, again after a
        restart. The outer unwind is the VM's end either way."""
        head, tail = self.steps.split(boot.RESTART_FROM)
        outer = contextlib.AsyncExitStack()
        async with outer:
            try:
                self.stack = outer
                await run_steps(head, self, outer, notify=self._on_step, kill_at=fault_step())
                while True:
                    _, tail = self.steps.split(boot.RESTART_FROM)
                    self.ending = "stop"
                    self.stack = contextlib.AsyncExitStack()
                    async with self.stack:
                        await run_steps(
                            tail, self, self.stack, notify=self._on_step, kill_at=fault_step()
                        )
                        if self.restarts == 0:
                            task_status.started()
                            await self._record_launched()
                        await self._serve()
                    # (The VMM's exit cancels the tail's scope, _serve included: what it
                    # decided is in self.ending, not in a return value.)
                    if not self._restarting():
                        return
                    self._begin_restart()
            except BaseException as exc:
                # The first cause wins: the watcher records E_VMM_EXITED before the
                # cancellation it causes reaches the steps.
                if self.failure is None:
                    self.failure = exc
                raise

    def _restarting(self) -> bool:
        return self.ending == "restart"

    async def _record_launched(self) -> None:
        if self.gate is not None and self.exec_plan is not None:
            # After started(): the caller need not wait for this fsynced append.
            await self.gate.launched(
                self.exec_plan,
                pid=self.handle.pid if self.handle else None,
                boot_s=round((self.ready_at or 0.0) - self.started_at, 3),
            )

    async def _serve(self) -> None:
        """Until a message ends this boot; ``self.ending`` says how."""
        async for msg in self.inbox:
            if isinstance(msg, StopVm):
                self.stop_reason = msg.reason
                await self._power_off_guest()
                return
            if isinstance(msg, DetachVm):
                self.detaching = True
                self.ending = "detach"
                return
            if isinstance(msg, RestartVm):
                if not self._restart_budget.allow():
                    self.stop_reason = f"{msg.reason}; {self._restart_budget.spent}"
                    await self._power_off_guest()
                    return
                self.ending = "restart"
                self.stop_reason = f"restarting: {msg.reason}"
                self.publish("vm.restarting", reason=msg.reason, restarts=self.restarts)
                await self._power_off_guest()
                return

    def _begin_restart(self) -> None:
        """Forget the last boot (the unwind of the tail released it) and count it."""
        self.restarts += 1
        self.adopt_from = None  # from now on this engine starts the VMM itself
        self.steps = boot.CLONE if self.restore is not None else boot.COLD_START
        self.handle = self.supervisor = self.agent = None
        self.exit_code = self.exit_reason = self.stop_reason = None
        self.ready_at = None
        self.state = "starting"
        self.vmm_exited = anyio.Event()
        self.started_at = time.monotonic()
        self.publish("vm.restarted", restarts=self.restarts)

    async def request_restart(self, reason: str) -> None:
        """``--health-action restart-vm``: stop this VM and boot it again in place."""
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self.send(RestartVm(reason=reason))

    async def teardown(self) -> None:
        """Everything was undone by the unwind in ``run``; tell the waiters."""
        self.exited.set()

    # -- the VMM watcher (started by the spawn/attach step) ---------------------------------

    async def watch_vmm(self) -> None:
        """Watch the VMM for the rest of the VM's life, in a task group on the stack.

        When it exits by itself the whole VM ends: during boot that is a failure
        (E_VMM_EXITED with the console's last lines), afterwards the normal end."""
        tg = await self.stack.enter_async_context(anyio.create_task_group())
        self.stack.callback(tg.cancel_scope.cancel)  # runs first: the watcher stops
        tg.start_soon(self._watch_vmm, tg.cancel_scope)

    async def _watch_vmm(self, scope: anyio.CancelScope) -> None:
        assert self.handle is not None
        status = await self.backend.wait(self.handle)
        self.vmm_exited.set()
        self.note_vmm_status(status, asked=self.stop_reason is not None)
        if self.state == "starting" and guest_exit_code(self._console()) is None:
            # A guest that printed its exit status simply finished quickly (a short
            # command entrypoint can power off before the host reads the hello).
            tail = console_tail(self._console())
            self.failure = BackendError(
                f"VM {self.request.name} exited during boot ({self.exit_reason})"
                + (f": {tail}" if tail else ""),
                code="E_VMM_EXITED",
                hint=f"console log: {self._console()}",
            )
            raise self.failure
        self.publish("vm.exited", code=self.exit_code, reason=self.exit_reason)
        scope.cancel()

    def note_vmm_status(self, status: int, *, asked: bool) -> None:
        """Record the VMM's end once: the guest's exit status if /init printed one."""
        if self.exit_reason is not None:
            return
        code = guest_exit_code(self._console())
        self.exit_code = code if code is not None else status
        if asked:
            self.exit_reason = self.stop_reason or "stopped"
        else:
            own = getattr(self.handle, "proc", None) is not None
            self.exit_reason = vmm_exit_reason(status, code, own_child=own)
        self.vmm_exited.set()

    def end_reason(self) -> str:
        """exit_reason for the row: how it ended, and at which step if during boot."""
        exc = self.failure
        where = f" at {self.step}" if self.ready_at is None else ""
        if isinstance(exc, anyio.get_cancelled_exc_class()):
            if self.ready_at is None:
                return f"cancelled{where}"
        elif exc is not None:
            cause = first_error(exc)
            if isinstance(cause, MvmError):
                return f"failed{where}: {cause.code}: {cause.message}"
            return f"failed{where}: {cause!r}"
        return self.exit_reason or self.stop_reason or "stopped"

    def _console(self) -> Any:
        assert self.plan is not None
        return self.plan.console_log

    # -- the stop path ---------------------------------------------------------------------

    async def _power_off_guest(self) -> None:
        """Ask the guest to sync and power off; the VMM is stopped only after that.

        Stopping the VMM alone (QMP quit, SIGTERM) drops what the guest still holds in
        its page cache: a file just written to a read-write volume came back empty on
        the next start. /init's poweroff syncs first. A guest that cannot or does not
        power off within ``stop_grace_s`` is stopped the hard way by the unwind."""
        assert self.agent is not None
        try:
            client = await self.agent.client(timeout=1.0)
            self.agent.expect_close = True
            await client.shutdown(timeout=2.0)
        except MvmError as exc:
            log.info("vm.no_guest_poweroff", vm=self.request.name, code=exc.code)
            return
        self.publish("vm.powering_off")
        with anyio.move_on_after(self.request.stop_grace_s):
            await self.vmm_exited.wait()

    async def request_detach(self) -> None:
        if self.request.mode == "detached":
            return  # a shim already runs it detached: nothing to hand over
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self.send(DetachVm())

    # -- what the steps need -------------------------------------------------------------------

    def agent_endpoint(self) -> AgentEndpoint:
        assert self.plan is not None
        endpoint = self.backend.agent_endpoint(self.plan)
        return endpoint if self.restore is None else RegreetEndpoint(endpoint)

    def write_mode(self, mode: str | None = None) -> None:
        """mode.json mirrors the row's mode for humans (DESIGN: Lifecycle modes)."""
        body = {"name": self.request.name, "mode": mode or self.request.mode}
        write_private(self.run_dir / "mode.json", json.dumps(body, sort_keys=True) + "\n")

    async def record_health(self, service: str, state: HealthState) -> None:
        self.health[service] = state
        await self.store.update_vm(self.request.name, health=json.dumps(self.health))

    def vm_spec(self) -> VmSpec:
        req, image = self.request, self.image
        extra_args = tuple(
            a for a in (kernel_arg(req.volumes), env_kernel_arg(dict(req.env))) if a
        )
        nics: tuple[NetDevice, ...] = ()
        if self.lease is not None:
            extra_args += (self.lease.kernel_arg,)
            nics = (NetDevice(tap=self.lease.tap, mac=self.lease.mac),)
        spec = VmSpec(
            name=req.name,
            kernel=image.kernel,
            rootfs=image.rootfs,
            run_dir=self.run_dir,
            vcpus=req.vcpus or image.vcpus,
            memory_mib=req.memory_mib or image.memory_mib,
            kernel_args=(f"mvm.hostname={req.name}", *extra_args),
            drives=tuple(self.drives),
            net=nics,
            accel=self.accel,
            rootfs_read_only=True,
        )
        snap = self.restore
        if snap is None:
            return spec
        # The device model must equal the source's: same kernel, disk, sizes and
        # accelerator; only host-side paths (run dir, sockets) differ.
        return attrs.evolve(
            spec,
            kernel=snap.kernel,
            rootfs=snap.rootfs,
            vcpus=snap.vcpus,
            memory_mib=snap.memory_mib,
            accel=Accel(snap.accel),
            incoming=snap.state_path,
            agent_vsock=snap.agent_transport == "vsock",
        )

    def record_spec(self) -> dict[str, Any]:
        req = self.request
        return {
            "image": str(self.image.directory),
            "ports": [str(p) for p in req.ports],
            "vcpus": req.vcpus,
            "memory_mib": req.memory_mib,
            "mode": req.mode,
            "volumes": [str(v) for v in req.volumes],
            "net": req.net,
            "ip": self.lease.ip if self.lease else None,
            "snapshot": self.restore.name if self.restore else None,
            "health_action": req.health_action,
            "stop_grace_s": req.stop_grace_s,
            "boot_timeout_s": req.boot_timeout_s,
        }

    def publish(self, kind: str, **data: Any) -> None:
        self.bus.publish(Event(kind=kind, source=self.name, vm=self.request.name, data=data))

    def _on_step(self, kind: str, data: dict[str, object]) -> None:
        name = kind.removeprefix("vm.step.").removesuffix(".done")
        if kind.endswith(".done"):
            seconds = data.get("seconds")
            if isinstance(seconds, float | int):
                self.step_seconds[name] = float(seconds)
        else:
            self.step = name
        self.publish(kind, **data)
