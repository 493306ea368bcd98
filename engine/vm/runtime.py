"""RuntimeVM: one running microVM and everything attached to it.

Start order is a chain of named steps (firecracker-go-sdk style): bind host
ports -> claim the name in the state store -> prepare the launch plan -> start
the VMM -> connect the agent (wait for hello = ready) -> open the agent mux for
other processes -> start port forwards -> start health checks -> mark running.
Teardown is the exact reverse, each step shielded by the supervisor: health
checks, forwards, mux, agent, then the VMM (graceful, then forced), then the
run directory's sockets, then the state row. A failure at any step unwinds only
what was done, so bad input never leaves a process or file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import attrs
import structlog

from mvm.actors.agent_connection import AgentConnection
from mvm.actors.agent_mux import AgentMux
from mvm.actors.health_check import HealthCheck, HealthPolicy, HealthState
from mvm.actors.port_forward import PortForward, bind_forward_listener
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
from mvm.engine.base.errors import BackendError, MvmError
from mvm.engine.base.paths import ensure_private_dir, vm_dir, write_private
from mvm.engine.base.process import is_same_process, process_start_time
from mvm.engine.base.runfiles import remove_run_files
from mvm.engine.images.image import Image
from mvm.engine.request.vmrequest import VmRequest
from mvm.engine.request.volumes import kernel_arg, prepare_volume
from mvm.engine.runtime.actor import Actor
from mvm.engine.runtime.events import Event, EventBus
from mvm.engine.runtime.supervisor import RestartPolicy, Supervisor
from mvm.engine.store import PortRecord, StateStore, VmRecord
from mvm.engine.vm import network
from mvm.engine.vm.planfile import PLAN_FILE, load_plan, save_plan
from mvm.engine.vm.snapshot_volumes import clone_drives
from mvm.engine.vm.snapshots import SnapshotMeta, new_identity

log = structlog.get_logger("mvm.vm")

_EXIT_LINE = re.compile(rb"mvm-exit: (-?\d+)")


@attrs.frozen
class StopVm:
    """Ask the VM to shut down (the actor then ends and tears down)."""

    reason: str = "requested"


@attrs.frozen
class DetachVm:
    """Let go of the VM without stopping it, so that another engine can adopt it."""


def guest_exit_code(console_log: Path) -> int | None:
    """The entrypoint's exit status as /init printed it, if it did."""
    try:
        data = console_log.read_bytes()[-65536:]
    except OSError:
        return None
    found = _EXIT_LINE.findall(data)
    return int(found[-1]) if found else None


def console_tail(console_log: Path, lines: int = 3) -> str:
    try:
        text = console_log.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def engine_owner() -> str:
    pid = os.getpid()
    return f"{pid}:{process_start_time(pid)}"


class RegreetEndpoint:
    """Dials like ``inner``; the re-greet itself is now AgentClient.connect's.

    A restored guest may believe its source's host is still attached (the
    virtio-serial port was open when the snapshot was taken, and a reconnect can
    be too quick for the agent to see a hang-up), so it would never say hello on
    its own. The client sends a host ``hello`` on every dial (not only for clones),
    which makes the agent drop that stale session and greet now; sending a second
    one here would read as an unasked-for hello (an agent restart)."""

    def __init__(self, inner: AgentEndpoint) -> None:
        self._inner = inner

    async def connect(self) -> anyio.abc.ByteStream:
        return await self._inner.connect()


class RuntimeVM(Actor[StopVm | DetachVm]):
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
    ) -> None:
        super().__init__(f"vm/{request.name}")
        self._gate = gate  # None only for adoption: that VMM was admitted when it launched
        self.exec_plan: ExecutionPlan | None = None
        self.request = request
        self.image = image
        self.backend = backend
        self._store = store
        self._bus = bus
        self.run_dir = vm_dir(request.name)
        self.handle: VmmHandle | None = None
        self.agent: AgentConnection | None = None
        self.exit_code: int | None = None
        self.exit_reason: str | None = None
        self.state: Literal["starting", "running", "stopping", "exited", "failed"] = "starting"
        self._claimed = False
        self.exited = anyio.Event()
        self.ready_at: float | None = None
        self.started_at = time.monotonic()
        self.health: dict[str, HealthState] = {}
        self.lease: network.Lease | None = None
        self.adopt_from = adopt_from
        self.restore = restore  # a clone: resume this snapshot instead of booting
        self.detaching = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        req = self.request
        listeners: list[anyio.abc.Listener[anyio.abc.SocketStream]] = []
        try:
            for mapping in req.ports:
                listeners.append(await bind_forward_listener(mapping))
            plan = await (self._adopt() if self.adopt_from is not None else self._launch())
        except BaseException as exc:
            await self._record_failed(exc)
            with anyio.CancelScope(shield=True):
                for listener in listeners:
                    await listener.aclose()
                if self.handle is None and self._claimed:
                    remove_run_files(self.run_dir)  # volume snapshots made before the VMM
                    await self._release_network()
            raise
        try:
            await self._supervise(plan, listeners, task_status)
        except BaseException as exc:
            if self.ready_at is None:
                await self._record_failed(exc)
            raise

    async def _launch(self) -> LaunchPlan:
        """Steps of a cold start: claim the name, volumes, network, then the VMM."""
        req = self.request
        await self._claim_name()
        if self.restore is not None:  # the snapshot's disks, copy-on-write
            drives = await clone_drives(self.restore.directory, self.restore.drives, self.run_dir)
        else:
            drives = [
                Drive(
                    await prepare_volume(req.name, vol, self.run_dir),
                    read_only=vol.read_only,
                    ident=vol.slug,
                )
                for vol in req.volumes
            ]
        if req.net == "tap":
            self.lease = await network.acquire(req.name, bridged=self.restore is None)
        plan = self.backend.prepare(self._vm_spec(tuple(drives)))
        if self._gate is not None:  # admission: the last step before the VMM exists
            self.exec_plan = await self._gate.admit(req, self.image)
        self._publish("vm.starting", backend=self.backend.name, accel=plan.accel.value)
        self.handle = await self.backend.start(plan, detached=True)
        save_plan(plan)
        await self._store.update_vm(
            req.name,
            pid=self.handle.pid,
            pid_start_time=process_start_time(self.handle.pid),
            control_socket=str(plan.control_socket),
            agent_socket=str(plan.agent_socket),
            console_log=str(plan.console_log),
        )
        return plan

    async def _adopt(self) -> LaunchPlan:
        """Take over a VMM another engine started (after ``detach`` or that engine's death)."""
        rec = self.adopt_from
        assert rec is not None and rec.pid is not None
        if not is_same_process(rec.pid, rec.pid_start_time):
            raise BackendError(f"the VMM of {rec.name} is gone", code="E_VMM_EXITED")
        plan = load_plan(self.run_dir)
        self.handle = self.backend.attach(plan, rec.pid)
        self._claimed = True
        leases = network.leases_of(rec.name)
        self.lease = leases[0] if leases else None
        await self._store.update_vm(rec.name, owner=engine_owner(), mode=self.request.mode)
        self._write_mode()
        self._publish("vm.adopted", pid=rec.pid)
        return plan

    async def _supervise(
        self,
        plan: LaunchPlan,
        listeners: list[anyio.abc.Listener[anyio.abc.SocketStream]],
        task_status: anyio.abc.TaskStatus[None],
    ) -> None:
        req = self.request
        endpoint = self.backend.agent_endpoint(plan)
        self.agent = AgentConnection(
            req.name,
            endpoint if self.restore is None else RegreetEndpoint(endpoint),
            bus=self._bus,
            hello_timeout=req.boot_timeout_s,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_vmm, tg.cancel_scope)
            async with Supervisor(self.name, events=self._bus) as sup:
                await sup.start(
                    self.agent,
                    policy=RestartPolicy(kind="on-failure", max_restarts=5, window_s=60),
                )
                if self.restore is not None and self.adopt_from is None:
                    await self._take_identity()
                await sup.start(
                    AgentMux(req.name, self.run_dir, self.agent, on_detach=self._request_detach),
                    policy=RestartPolicy(kind="on-failure", max_restarts=3, window_s=60),
                )
                for mapping, listener in zip(req.ports, listeners, strict=True):
                    await sup.start(
                        PortForward(req.name, mapping, listener, self.agent),
                        policy=RestartPolicy(kind="never"),
                    )
                for service in self.image.health_checks:
                    await sup.start(
                        HealthCheck(
                            req.name,
                            service,
                            self.agent,
                            bus=self._bus,
                            policy=HealthPolicy(action=req.health_action),
                            on_change=self._record_health,
                        ),
                        policy=RestartPolicy(kind="never"),
                    )
                self.ready_at = time.monotonic()
                self.state = "running"
                await self._store.update_vm(req.name, state="running", started_at=time.time())
                self._publish(
                    "vm.ready",
                    boot_s=round(self.ready_at - self.started_at, 3),
                    hello=self.agent.hello,
                )
                task_status.started()
                if self._gate is not None and self.exec_plan is not None:
                    # After started(): the caller need not wait for this fsynced append.
                    await self._gate.launched(
                        self.exec_plan,
                        pid=self.handle.pid if self.handle else None,
                        boot_s=round(self.ready_at - self.started_at, 3),
                    )
                async for msg in self.inbox:
                    if isinstance(msg, StopVm):
                        self.exit_reason = msg.reason
                        await self._power_off_guest()
                        break
                    if isinstance(msg, DetachVm):
                        self.detaching = True
                        break
            tg.cancel_scope.cancel()

    async def _watch_vmm(self, scope: anyio.CancelScope) -> None:
        assert self.handle is not None
        status = await self.backend.wait(self.handle)
        code = guest_exit_code(self.handle.plan.console_log)
        self.exit_code = code if code is not None else status
        if self.state == "starting" and code is None:
            # A guest that printed its exit status simply finished quickly (a short
            # command entrypoint can power off before the host reads the hello).
            tail = console_tail(self.handle.plan.console_log)
            raise BackendError(
                f"VM {self.request.name} exited during boot (status {status})"
                + (f": {tail}" if tail else ""),
                code="E_VMM_EXITED",
                hint=f"console log: {self.handle.plan.console_log}",
            )
        self.exit_reason = self.exit_reason or "guest exited"
        self._publish("vm.exited", code=self.exit_code)
        scope.cancel()

    async def teardown(self) -> None:
        """Stop the VMM and release everything; runs shielded, exactly once.

        After ``DetachVm`` the VMM, its network lease and its run files stay: the
        row is handed over (owner cleared, mode detached) for a shim to adopt."""
        if self.detaching:
            await self._store.update_vm(self.request.name, owner=None, mode="detached")
            self._publish("vm.detached")
            self.exited.set()
            return
        if not self._claimed:
            # The claim failed (E_NAME_TAKEN): the run dir belongs to the VM that holds
            # the name, so there is nothing of ours to undo there.
            self.state = "failed"
            self.exited.set()
            return
        self.state = "stopping"
        if self.handle is not None:
            try:
                status = await self.backend.stop(self.handle, grace=self.request.stop_grace_s)
                if self.exit_code is None:
                    code = guest_exit_code(self.handle.plan.console_log)
                    self.exit_code = code if code is not None else status
            except Exception as exc:  # teardown must go on: record and continue
                log.error("vm.stop_failed", vm=self.request.name, error=repr(exc))
        await self._release_network()
        (self.run_dir / PLAN_FILE).unlink(missing_ok=True)  # nothing left to adopt
        self.state = "exited"
        if self._claimed:
            await self._store.update_vm(
                self.request.name,
                state="exited",
                exited_at=time.time(),
                exit_code=self.exit_code,
                exit_reason=self.exit_reason or "stopped",
                pid=None,
            )
        self._publish("vm.stopped", code=self.exit_code, reason=self.exit_reason or "stopped")
        self.exited.set()

    # -- helpers -----------------------------------------------------------------------------

    async def _record_failed(self, exc: BaseException) -> None:
        """plan.failed for an admitted launch that never became ready."""
        if self._gate is not None and self.exec_plan is not None:
            plan, self.exec_plan = self.exec_plan, None  # once, even if both paths see it
            await self._gate.failed(plan, exc)

    async def _power_off_guest(self) -> None:
        """Ask the guest to sync and power off; the VMM is stopped only after that.

        Stopping the VMM alone (QMP quit, SIGTERM) drops what the guest still holds
        in its page cache: a file just written to a read-write volume came back empty
        on the next start. /init's poweroff syncs first. ``_watch_vmm`` cancels the
        wait below as soon as the VMM exits; a guest that cannot or does not power
        off within ``stop_grace_s`` is stopped the hard way by ``teardown``."""
        assert self.agent is not None
        try:
            client = await self.agent.client(timeout=1.0)
            self.agent.expect_close = True
            await client.shutdown(timeout=2.0)
        except MvmError as exc:
            log.info("vm.no_guest_poweroff", vm=self.request.name, code=exc.code)
            return
        self._publish("vm.powering_off")
        await anyio.sleep(self.request.stop_grace_s)

    async def _take_identity(self) -> None:
        """A clone resumed as its source: give it its own hostname, machine-id and RNG
        seed before anything else talks to it (forwards, health, users)."""
        assert self.agent is not None and self.restore is not None
        ident = new_identity(self.request.name)
        lease = self.lease  # a TAP clone: its own TAP (already in the VMM), MAC and address
        net = f"{lease.mac},{lease.ip}/{lease.prefix},{lease.gateway}" if lease else None
        client = await self.agent.client()
        reply = await client.identity(ident.hostname, ident.machine_id, ident.seed, net=net)
        applied: dict[str, Any] = {
            k: reply[k] for k in ("hostname", "machine_id", "net") if k in reply
        }
        self.agent.hello.update(applied)
        if lease is not None:
            await network.join_bridge(lease)
        self._publish("vm.identity", snapshot=self.restore.name, **applied)

    async def _request_detach(self) -> None:
        if self.request.mode == "detached":
            return  # a shim already runs it detached: nothing to hand over
        with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError):
            await self.send(DetachVm())

    def _write_mode(self, mode: str | None = None) -> None:
        """mode.json mirrors the row's mode for humans (DESIGN: Lifecycle modes)."""
        write_private(
            self.run_dir / "mode.json",
            json.dumps(
                {"name": self.request.name, "mode": mode or self.request.mode}, sort_keys=True
            )
            + "\n",
        )

    async def _release_network(self) -> None:
        if self.lease is not None:
            lease, self.lease = self.lease, None
            await network.release(lease)

    async def _record_health(self, service: str, state: HealthState) -> None:
        self.health[service] = state
        await self._store.update_vm(self.request.name, health=json.dumps(self.health))

    async def _claim_name(self) -> None:
        """Insert the VM row and its ports in one transaction; an exited VM of the same
        name is replaced, a live one is not (E_NAME_TAKEN), even across processes."""
        req = self.request
        ensure_private_dir(self.run_dir)
        await self._store.claim_vm(
            VmRecord(
                name=req.name,
                backend=self.backend.name,
                mode=req.mode,
                state="starting",
                pid=None,
                pid_start_time=None,
                run_dir=str(self.run_dir),
                image=str(self.image.directory),
                sealed=self.image.sealed,
                created_at=time.time(),
                started_at=None,
                exited_at=None,
                exit_code=None,
                exit_reason=None,
                control_socket=None,
                agent_socket=None,
                console_log=None,
                spec_json=json.dumps(self._record_spec(), sort_keys=True),
                owner=engine_owner(),
            ),
            [
                PortRecord(
                    vm=req.name,
                    host_addr=p.host_addr,
                    host_port=p.host_port,
                    guest_port=p.guest_port,
                )
                for p in req.ports
            ],
        )
        self._claimed = True
        self._write_mode()

    def _vm_spec(self, drives: tuple[Drive, ...] = ()) -> VmSpec:
        req, image = self.request, self.image
        extra_args = tuple(a for a in (kernel_arg(req.volumes),) if a)
        nics: tuple[NetDevice, ...] = ()
        if self.lease is not None:
            extra_args += (self.lease.kernel_arg,)
            nics = (NetDevice(tap=self.lease.tap, mac=self.lease.mac),)
        accel = Accel(os.environ.get("MVM_ACCEL", "auto"))
        spec = VmSpec(
            name=req.name,
            kernel=image.kernel,
            rootfs=image.rootfs,
            run_dir=self.run_dir,
            vcpus=req.vcpus or image.vcpus,
            memory_mib=req.memory_mib or image.memory_mib,
            kernel_args=(f"mvm.hostname={req.name}", *extra_args),
            drives=drives,
            net=nics,
            accel=accel,
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

    def _record_spec(self) -> dict[str, Any]:
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
        }

    def _publish(self, kind: str, **data: Any) -> None:
        self._bus.publish(Event(kind=kind, source=self.name, vm=self.request.name, data=data))
