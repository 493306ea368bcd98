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
import math
import time
from typing import Any, Literal

import anyio
import anyio.abc

from mvm.actors.agent_connection import AgentConnection
from mvm.actors.health_check import HealthState
from mvm.backends.abc.types import (
    Accel,
    AgentEndpoint,
    Backend,
    Drive,
    LaunchPlan,
    VmmHandle,
)
from mvm.engine.admission.gate import LaunchGate
from mvm.engine.admission.plans import ExecutionPlan
from mvm.engine.base.errors import BackendError, MvmError, SecurityError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import vm_dir, write_private
from mvm.engine.images.image import Image
from mvm.engine.request.vmrequest import VmRequest
from mvm.engine.runtime.actor import Actor
from mvm.engine.runtime.events import Event, EventBus, EventKind
from mvm.engine.runtime.supervisor import Supervisor
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm import boot, network
from mvm.engine.vm.exit_status import console_tail, guest_exit_code, vmm_exit_reason
from mvm.engine.vm.messages import (
    DetachVm,
    RegreetEndpoint,
    RestartBudget,
    RestartVm,
    StopVm,
    first_error,
)
from mvm.engine.vm.snapshots import SnapshotMeta
from mvm.engine.vm.steps import Steps, fault_step, run_steps
from mvm.engine.vm.verity_check import verity_corruption

log = get_logger("mvm.vm")

State = Literal["starting", "running", "stopping", "exited", "failed"]


__all__ = ["DetachVm", "RestartVm", "RuntimeVM", "StopVm"]


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
        self.ttl_deadline: float | None = None  # anyio clock; set when first ready
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
        """Until a message ends this boot, or the request's TTL (counted from the first
        boot's ready, so a restart does not extend it) runs out: then the VM stops
        the way a StopVm stops it, with the reason "ttl expired"."""
        ttl = self.request.ttl_s
        if ttl is not None and self.ttl_deadline is None:
            self.ttl_deadline = anyio.current_time() + ttl
        with anyio.move_on_at(self.ttl_deadline or math.inf):
            await self._serve_inbox()
            return
        self.stop_reason = "ttl expired"
        log.info("vm.ttl_expired", vm=self.request.name, ttl_s=ttl)
        await self._power_off_guest()

    async def _serve_inbox(self) -> None:
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
                self.publish(EventKind.VM_RESTARTING, reason=msg.reason, restarts=self.restarts)
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
        self.publish(EventKind.VM_RESTARTED, restarts=self.restarts)

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
            corrupted = verity_corruption(self._console())
            if corrupted is not None:  # the kernel refused a tampered block of the root
                self.failure = SecurityError(
                    f"VM {self.request.name}: sealed rootfs {self.image.rootfs} fails "
                    f"verification ({corrupted})",
                    code="E_VERITY",
                    hint=f"the image was altered after its build: rebuild it; console log: "
                    f"{self._console()}",
                )
                raise self.failure
            self.failure = BackendError(
                f"VM {self.request.name} exited during boot ({self.exit_reason})"
                + (f": {tail}" if tail else ""),
                code="E_VMM_EXITED",
                hint=f"console log: {self._console()}",
            )
            raise self.failure
        self.publish(EventKind.VM_EXITED, code=self.exit_code, reason=self.exit_reason)
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
        self.publish(EventKind.VM_POWERING_OFF)
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
