"""The named steps of a VM's life, and the three lists made of them.

``COLD_START`` is the whole boot; ``CLONE`` and ``ADOPT`` are edits of it by name, so
what differs between them is visible in the three definitions at the bottom. Each step
is a function of the ``RuntimeVM`` it belongs to; its undo is pushed on the VM's one
exit stack as soon as it succeeded (engine/vm/steps.py), so a failure at any step and
the normal end of the VM run the same reverse unwind.

A VM that ``detach`` handed over to another supervisor keeps what a new owner needs
(the VMM, its run files and plan, its network lease, its row): those undos check
``vm.detaching`` and leave them be.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import anyio

from mvm.actors.agent_connection import AgentConnection
from mvm.actors.agent_mux import AgentMux
from mvm.actors.health_check import HealthCheck, HealthPolicy
from mvm.actors.port_forward import PortForward, bind_forward_listener
from mvm.backends.abc.types import Drive
from mvm.engine.base.errors import BackendError
from mvm.engine.base.paths import ensure_private_dir
from mvm.engine.base.process import is_same_process, process_start_time
from mvm.engine.base.runfiles import PLAN_FILE, remove_run_files
from mvm.engine.request.volumes import prepare_volume
from mvm.engine.runtime.events import EventKind
from mvm.engine.runtime.supervisor import RestartPolicy, Supervisor
from mvm.engine.store import PortRecord, VmRecord
from mvm.engine.vm import network
from mvm.engine.vm.launch_spec import record_spec, vm_spec
from mvm.engine.vm.owner import engine_owner
from mvm.engine.vm.planfile import load_plan, save_plan
from mvm.engine.vm.snapshot_volumes import clone_drives
from mvm.engine.vm.snapshots import new_identity
from mvm.engine.vm.steps import Step, Steps
from mvm.engine.vm.verity_check import check_image_verity

if TYPE_CHECKING:
    from mvm.engine.vm.runtime import RuntimeVM

AGENT_POLICY = RestartPolicy(kind="on-failure", max_restarts=5, window_s=60)
MUX_POLICY = RestartPolicy(kind="on-failure", max_restarts=3, window_s=60)


# -- host ports ------------------------------------------------------------------------------


async def bind_ports(vm: RuntimeVM) -> None:
    """Bind every forwarded host port first: E_PORT_IN_USE before anything exists."""
    for mapping in vm.request.ports:
        vm.listeners.append(await bind_forward_listener(mapping))


async def close_listeners(vm: RuntimeVM) -> None:
    for listener in vm.listeners:
        await listener.aclose()
    vm.listeners.clear()


# -- the state row ---------------------------------------------------------------------------


async def claim_name(vm: RuntimeVM) -> None:
    """Insert the VM row and its ports in one transaction; an exited VM of the same
    name is replaced, a live one is not (E_NAME_TAKEN), even across processes."""
    req = vm.request
    await vm.store.claim_vm(
        VmRecord(
            name=req.name,
            backend=vm.backend.name,
            mode=req.mode,
            state="starting",
            pid=None,
            pid_start_time=None,
            run_dir=str(vm.run_dir),
            image=str(vm.image.directory),
            sealed=vm.image.sealed,
            created_at=time.time(),
            started_at=None,
            exited_at=None,
            exit_code=None,
            exit_reason=None,
            control_socket=None,
            agent_socket=None,
            console_log=None,
            spec_json=json.dumps(record_spec(vm), sort_keys=True),
            owner=engine_owner(),
        ),
        [
            PortRecord(
                vm=req.name, host_addr=p.host_addr, host_port=p.host_port, guest_port=p.guest_port
            )
            for p in req.ports
        ],
    )


async def make_run_dir(vm: RuntimeVM) -> None:
    """The run dir is made only once the name is ours: after E_NAME_TAKEN it belongs to
    the VM that holds the name. Its transient files (sockets, overlays) go at the end."""
    ensure_private_dir(vm.run_dir)
    vm.write_mode()


async def record_end(vm: RuntimeVM) -> None:
    """The row's last word: how the VM ended (or, after detach, the hand-over)."""
    name = vm.request.name
    if vm.detaching:
        await vm.store.update_vm(name, owner=None, mode="detached")
        vm.publish(EventKind.VM_DETACHED)
        return
    cancelled = isinstance(vm.failure, anyio.get_cancelled_exc_class())
    failed = vm.failure is not None and vm.ready_at is None and not cancelled
    vm.state = "failed" if failed else "exited"
    reason = vm.end_reason()
    await vm.store.update_vm(
        name,
        state=vm.state,
        exited_at=time.time(),
        exit_code=vm.exit_code,
        exit_reason=reason,
        pid=None,
        health=None,
    )
    vm.publish(EventKind.VM_STOPPED, code=vm.exit_code, reason=reason)


async def adopt_row(vm: RuntimeVM) -> None:
    """Take over a VMM another engine started (after ``detach`` or that engine's death)."""
    rec = vm.adopt_from
    assert rec is not None and rec.pid is not None
    if not is_same_process(rec.pid, rec.pid_start_time):
        raise BackendError(f"the VMM of {rec.name} is gone", code="E_VMM_EXITED")
    await vm.store.update_vm(rec.name, owner=engine_owner(), mode=vm.request.mode)


async def remove_transient_files(vm: RuntimeVM) -> None:
    if not vm.detaching:
        remove_run_files(vm.run_dir)


# -- disks and network -----------------------------------------------------------------------


async def volumes(vm: RuntimeVM) -> None:
    vm.drives = [
        Drive(
            await prepare_volume(vm.request.name, vol, vm.run_dir),
            read_only=vol.read_only,
            ident=vol.slug,
        )
        for vol in vm.request.volumes
    ]


async def clone_volumes(vm: RuntimeVM) -> None:
    """A clone's disks are the snapshot's, copy-on-write in its own run dir."""
    assert vm.restore is not None
    vm.drives = await clone_drives(vm.restore.directory, vm.restore.drives, vm.run_dir)


async def acquire_network(vm: RuntimeVM) -> None:
    if vm.request.net == "tap":
        # A clone's TAP joins the bridge only once it took its own identity (MAC, IP).
        vm.lease = await network.acquire(vm.request.name, bridged=vm.restore is None)


async def find_lease(vm: RuntimeVM) -> None:
    leases = network.leases_of(vm.request.name)
    vm.lease = leases[0] if leases else None


async def release_network(vm: RuntimeVM) -> None:
    if vm.lease is not None and not vm.detaching:
        lease, vm.lease = vm.lease, None
        await network.release(lease)


# -- the VMM ---------------------------------------------------------------------------------


async def prepare(vm: RuntimeVM) -> None:
    """The LaunchPlan from the admitted plan: a sealed image's dm table comes from the
    signed verity parameters, once the image on disk is checked to still match them."""
    if vm.exec_plan is not None and vm.restore is None:
        await anyio.to_thread.run_sync(check_image_verity, vm.image.directory, vm.exec_plan.verity)
    vm.plan = vm.backend.prepare(vm_spec(vm))


async def admit(vm: RuntimeVM) -> None:
    """Admission comes just before the launch plan is made (whose dm-verity table is
    the signed plan's) and the VMM exists: a signed ExecutionPlan."""
    if vm.gate is not None:
        vm.exec_plan = await vm.gate.admit(vm.request, vm.image)


async def record_failed_launch(vm: RuntimeVM) -> None:
    """plan.failed in the audit log for an admitted launch that never became ready."""
    if vm.gate is not None and vm.exec_plan is not None and vm.ready_at is None:
        plan, vm.exec_plan = vm.exec_plan, None
        cause = vm.failure or BackendError("the launch was cancelled", code="E_CANCELLED")
        await vm.gate.failed(plan, cause)


async def spawn_vmm(vm: RuntimeVM) -> None:
    assert vm.plan is not None
    vm.publish(EventKind.VM_STARTING, backend=vm.backend.name, accel=vm.plan.accel.value)
    vm.handle = await vm.backend.start(vm.plan, detached=True)
    await vm.store.update_vm(
        vm.request.name,
        pid=vm.handle.pid,
        pid_start_time=process_start_time(vm.handle.pid),
        control_socket=str(vm.plan.control_socket),
        agent_socket=str(vm.plan.agent_socket),
        console_log=str(vm.plan.console_log),
    )
    await vm.watch_vmm()


async def attach_vmm(vm: RuntimeVM) -> None:
    rec = vm.adopt_from
    assert rec is not None and rec.pid is not None
    vm.plan = load_plan(vm.run_dir)
    vm.handle = vm.backend.attach(vm.plan, rec.pid)
    vm.publish(EventKind.VM_ADOPTED, pid=rec.pid)
    await vm.watch_vmm()


async def stop_vmm(vm: RuntimeVM) -> None:
    """Graceful, then forced (the backend's stop); a detached VM's VMM stays."""
    if vm.handle is None or vm.detaching:
        return
    vm.state = "stopping"
    status = await vm.backend.stop(vm.handle, grace=vm.request.stop_grace_s)
    vm.note_vmm_status(status, asked=True)


async def write_plan(vm: RuntimeVM) -> None:
    """The plan file is what was sent to the VMM: a later engine adopts from it."""
    assert vm.plan is not None
    save_plan(vm.plan)


async def remove_plan(vm: RuntimeVM) -> None:
    if not vm.detaching:
        (vm.run_dir / PLAN_FILE).unlink(missing_ok=True)  # nothing left to adopt


# -- the guest -------------------------------------------------------------------------------


async def connect_agent(vm: RuntimeVM) -> None:
    """The supervisor of the VM's actors; its exit (the undo) stops them in reverse."""
    assert vm.plan is not None
    vm.supervisor = await vm.stack.enter_async_context(Supervisor(vm.name, events=vm.bus))
    vm.agent = AgentConnection(
        vm.request.name,
        vm.agent_endpoint(),
        bus=vm.bus,
        hello_timeout=vm.request.boot_timeout_s,
        vmm_exited=vm.vmm_exited,
    )
    await vm.supervisor.start(vm.agent, policy=AGENT_POLICY)
    if vm.adopt_from is None or vm.adopt_from.started_at is None or vm.restarts:
        # the hello is the boot's known moment on the wall clock (logs --since and
        # --timestamps place the console on it); a one-shot command may be done and the
        # guest off before mark_running, so it is written here. An adopted VM keeps its own.
        await vm.store.update_vm(vm.request.name, started_at=time.time())


async def take_identity(vm: RuntimeVM) -> None:
    """A clone resumed as its source: give it its own hostname, machine-id and RNG
    seed before anything else talks to it (forwards, health, users)."""
    assert vm.agent is not None and vm.restore is not None
    ident = new_identity(vm.request.name)
    lease = vm.lease  # a TAP clone: its own TAP (already in the VMM), MAC and address
    net = f"{lease.mac},{lease.ip}/{lease.prefix},{lease.gateway}" if lease else None
    client = await vm.agent.client()
    reply = await client.identity(ident.hostname, ident.machine_id, ident.seed, net=net)
    applied: dict[str, Any] = {k: reply[k] for k in ("hostname", "machine_id", "net") if k in reply}
    vm.agent.hello.update(applied)
    if lease is not None:
        await network.join_bridge(lease)
    vm.publish(EventKind.VM_IDENTITY, snapshot=vm.restore.name, **applied)


async def agent_mux(vm: RuntimeVM) -> None:
    assert vm.supervisor is not None and vm.agent is not None
    mux = AgentMux(vm.request.name, vm.run_dir, vm.agent, on_detach=vm.request_detach)
    await vm.supervisor.start(mux, policy=MUX_POLICY)


async def forwards(vm: RuntimeVM) -> None:
    assert vm.supervisor is not None and vm.agent is not None
    for mapping, listener in zip(vm.request.ports, vm.listeners, strict=True):
        await vm.supervisor.start(
            PortForward(vm.request.name, mapping, listener, vm.agent, owns_listener=False),
            policy=RestartPolicy(kind="never"),
        )


async def health(vm: RuntimeVM) -> None:
    assert vm.supervisor is not None and vm.agent is not None
    for service in vm.image.health_checks:
        await vm.supervisor.start(
            HealthCheck(
                vm.request.name,
                service,
                vm.agent,
                bus=vm.bus,
                policy=HealthPolicy(action=vm.request.health_action),
                on_change=vm.record_health,
                restart_vm=vm.request_restart,
            ),
            policy=RestartPolicy(kind="never"),
        )


async def mark_running(vm: RuntimeVM) -> None:
    vm.ready_at = time.monotonic()
    vm.state = "running"
    await vm.store.update_vm(vm.request.name, state="running")
    assert vm.agent is not None
    vm.publish(
        EventKind.VM_READY, boot_s=round(vm.ready_at - vm.started_at, 3), hello=vm.agent.hello
    )


# -- the lists -------------------------------------------------------------------------------

COLD_START: Steps[RuntimeVM] = Steps(
    (
        Step("bind_ports", bind_ports, close_listeners),
        Step("claim_name", claim_name, record_end),
        Step("run_dir", make_run_dir, remove_transient_files),
        Step("volumes", volumes),
        Step("network", acquire_network, release_network),
        Step("admit", admit, record_failed_launch),
        Step("prepare", prepare),
        Step("spawn_vmm", spawn_vmm, stop_vmm),
        Step("save_plan", write_plan, remove_plan),
        Step("connect_agent", connect_agent),
        Step("mux", agent_mux),
        Step("forwards", forwards),
        Step("health", health),
        Step("mark_running", mark_running),
    )
)

CLONE: Steps[RuntimeVM] = COLD_START.replace(
    "volumes", Step("volumes", clone_volumes)
).insert_after("connect_agent", Step("identity", take_identity))

RESTART_FROM = "spawn_vmm"
"""A restart (``--health-action restart-vm``) undoes this step and every later one, and
does them again: the name, run dir, volumes, network lease and bound ports stay."""

ADOPT: Steps[RuntimeVM] = (
    COLD_START.replace("claim_name", Step("claim_name", adopt_row, record_end))
    .replace("network", Step("network", find_lease, release_network))
    .replace("spawn_vmm", Step("spawn_vmm", attach_vmm, stop_vmm))
    .without("volumes", "prepare", "admit")
)
