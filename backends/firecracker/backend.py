"""The Firecracker backend: one ``firecracker --api-sock RUN/fc.sock`` per VM, configured over REST.

The process rules are every VMM's (``mvm.backends.vmm``). What is Firecracker's
here: the VMM starts empty and ``start`` sends the plan's ``api_calls`` in order
(``InstanceStart`` or ``snapshot/load`` last); any failure on the way kills and
reaps the process. Its stdout is the guest serial console (``console.log``), its
own log goes to ``firecracker.log`` once the logger is configured. The graceful
stop is ``SendCtrlAltDel`` to a running guest.

``/dev/kvm`` is mandatory. On a host that is itself a VM (nested
virtualization) KVM works but guests run far slower than on bare metal;
``availability`` says so in its reason rather than pretending either way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs

from mvm.backends import vmm
from mvm.backends.abc.types import (
    Accel,
    AgentEndpoint,
    ApiCall,
    Availability,
    LaunchInputs,
    LaunchPlan,
    PausedHook,
    VmmHandle,
    VmSpec,
)
from mvm.backends.firecracker.api import FirecrackerApi, FirecrackerApiError
from mvm.backends.firecracker.config import FcPaths, config_calls, snapshot_files
from mvm.backends.firecracker.fetch import cached_binary
from mvm.backends.guest.protocol import AGENT_VSOCK_PORT
from mvm.backends.vmm import kvm as _kvm
from mvm.backends.vmm.hybrid_vsock import HybridVsockEndpoint
from mvm.backends.vmm.rest import RestControl
from mvm.engine.base.errors import BackendError, BackendUnavailable, ConfigError
from mvm.engine.base.log import get_logger

log = get_logger("mvm.firecracker")

SETUP_HINT = "run `python -m mvm.backends.firecracker.fetch` or set MVM_FIRECRACKER"
START_TIMEOUT_S = 10.0

# The KVM checks live in mvm.backends.vmm.kvm (Cloud Hypervisor needs them too);
# re-exported because the CLI and tests import them from here, and availability()
# looks kvm_status up here so that a test can replace it.
KvmStatus = _kvm.KvmStatus
NESTED_HINT = _kvm.NESTED_HINT
guests_run_under_kvm = _kvm.guests_run_under_kvm
host_is_vm = _kvm.host_is_vm
kvm_status = _kvm.kvm_status


class FirecrackerKvmError(BackendError):
    """Firecracker could not use KVM to create or run the VM."""

    code = "E_FC_KVM"


# -- host checks ---------------------------------------------------------------------------


def find_binary() -> Path | None:
    """``$MVM_FIRECRACKER``, else ``firecracker`` on PATH, else the fetched cache copy."""
    found = vmm.find_program("firecracker")
    return found if found or vmm.binary_override("firecracker") else cached_binary()


# -- handle ------------------------------------------------------------------------------


@attrs.define
class FirecrackerHandle(vmm.VmmProcess):
    """A Firecracker process (the shared VMM handle; the type tells backends apart)."""


KIND = vmm.VmmKind(
    label="Firecracker",
    event="firecracker",
    exec_error=lambda message: BackendUnavailable(message, code="E_FC_BINARY", hint=SETUP_HINT),
)


def _vm_id(name: str) -> str:
    """Firecracker's ``--id`` allows ``[A-Za-z0-9-]{1,64}``."""
    return (re.sub(r"[^A-Za-z0-9-]", "-", name)[:64]) or "mvm"


async def _api_answers(socket: Path) -> None:
    async with FirecrackerApi.open(socket, timeout=1.0) as api:
        await api.get("/")


# -- backend -----------------------------------------------------------------------------


class FirecrackerBackend(RestControl[FirecrackerHandle]):
    name = "firecracker"
    handle_type = FirecrackerHandle
    kind = KIND
    api_type = FirecrackerApi

    def __init__(
        self,
        *,
        binary: Path | None = None,
        start_timeout: float = START_TIMEOUT_S,
        kvm_device: str = "/dev/kvm",
    ) -> None:
        """``binary=None`` resolves it with ``find_binary`` when needed."""
        self._binary = binary
        self.start_timeout = start_timeout
        self.kvm_device = kvm_device

    def binary(self) -> Path | None:
        return vmm.resolve_binary(self._binary, find_binary)

    def availability(self) -> Availability:
        binary = self.binary()
        if binary is None:
            where = self._binary or vmm.binary_override("firecracker") or "PATH or the mvm cache"
            return Availability(False, f"firecracker binary not found ({where}); {SETUP_HINT}")
        return vmm.kvm_availability(KIND.label, binary, kvm_status(self.kvm_device))

    # -- planning --------------------------------------------------------------------------

    def prepare(self, spec: VmSpec) -> LaunchPlan:
        vmm.refuse_tcg(KIND.label, spec.accel, code="E_FC_ACCEL")
        kernel = None if spec.incoming else spec.kernel
        vmm.check_inputs(kernel, spec.rootfs, spec.incoming, spec.drives)
        if spec.incoming is not None and not snapshot_files(spec.incoming)[1].is_file():
            raise ConfigError(
                f"snapshot memory file {snapshot_files(spec.incoming)[1]} does not exist",
                code="E_SNAPSHOT_MISSING",
            )
        calls = config_calls(spec)
        binary = self.binary()
        if binary is None:
            raise BackendUnavailable(
                "firecracker binary not found", code="E_FC_BINARY", hint=SETUP_HINT
            )
        paths = FcPaths(spec.run_dir)
        argv = (str(binary), "--api-sock", str(paths.api), "--id", _vm_id(spec.name))
        boot = next((c.body for c in calls if c.path == "/boot-source"), None)
        plan = LaunchPlan(
            backend=self.name,
            argv=argv,
            run_dir=spec.run_dir,
            control_socket=paths.api,
            agent_socket=paths.vsock,
            console_log=paths.console,
            pid_file=paths.pid,
            accel=Accel.KVM,
            kernel_cmdline=str(boot["boot_args"]) if boot else "",
            api_calls=tuple(calls),
            inputs=LaunchInputs(kernel, spec.rootfs, spec.incoming),
        )
        return plan

    def api_calls(self, plan: LaunchPlan) -> tuple[ApiCall, ...]:
        """The configuration ``start`` will send for ``plan`` (for doctor and tests)."""
        return plan.api_calls

    # -- process ---------------------------------------------------------------------------

    async def spawn(self, plan: LaunchPlan) -> FirecrackerHandle:
        """Start the process and wait until its API answers; configures nothing.

        The run directory is its working directory (the vsock path is relative, see
        ``config``); its stdout is the guest serial console."""
        paths = FcPaths(plan.run_dir)
        opts = vmm.SpawnOptions(
            output=plan.console_log,
            append=True,
            cwd=plan.run_dir,
            touch=(paths.log, paths.metrics),  # Firecracker refuses a missing log file
            write_pid=True,
        )
        return await vmm.launch(
            KIND, FirecrackerHandle, plan, opts, _api_answers, timeout=self.start_timeout
        )

    async def configure(self, handle: FirecrackerHandle, calls: tuple[ApiCall, ...]) -> None:
        """Send ``calls`` in order; a KVM failure at start is re-coded E_FC_KVM."""
        async with FirecrackerApi.open(handle.plan.control_socket) as api:
            for call in calls:
                try:
                    await api.call(call)
                except FirecrackerApiError as exc:
                    starting = call.path in ("/actions", "/snapshot/load")
                    if starting and "kvm" in exc.fault.lower():
                        kvm = kvm_status(self.kvm_device)
                        raise FirecrackerKvmError(
                            f"Firecracker could not run the VM with KVM: {exc.fault}",
                            hint=kvm.reason,
                        ) from None
                    raise
                except BackendError:
                    if handle.status() is not None:  # the call killed it: say why
                        line = vmm.last_line(FcPaths(handle.plan.run_dir).log) or vmm.last_line(
                            handle.plan.console_log
                        )
                        raise BackendError(
                            f"Firecracker exited during {call.method} {call.path}: {line}",
                            code="E_VMM_START",
                        ) from None
                    raise

    async def start(self, plan: LaunchPlan, *, detached: bool = False) -> FirecrackerHandle:
        """Spawn, send ``plan.api_calls`` in order (boot or restore); returns once the
        VM runs. ``plan.inputs`` are not checked again here: a file gone since
        ``prepare`` is reported by Firecracker itself (its fault names the call)."""
        return await vmm.start_configured(
            KIND,
            plan,
            backend=self.name,
            plan_code="E_FC_PLAN",
            spawn=self.spawn,
            configure=self.configure,
            restore_path="/snapshot/load",
            detached=detached,
        )

    async def stop(self, handle: VmmHandle, *, grace: float = 5.0) -> int:
        """``SendCtrlAltDel`` to a running guest, ``grace`` s, then SIGKILL."""
        graceful = _ctrl_alt_del if grace > 0 else None
        return await self.stop_with(handle, graceful, grace)

    # -- control over the API (pause and resume: RestControl) ------------------------------

    async def snapshot(
        self,
        handle: VmmHandle,
        path: Path,
        *,
        while_paused: PausedHook | None = None,
        timeout: float = 300.0,
    ) -> None:
        """Write a full snapshot: VM state at ``path``, guest memory at ``path.mem``.

        Firecracker snapshots only a paused VM; a running one is paused for the
        copy and resumed afterwards. Load it with ``VmSpec(incoming=path)``."""
        state_file, mem_file = snapshot_files(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp_state = state_file.with_name(state_file.name + ".tmp")
        tmp_mem = mem_file.with_name(mem_file.name + ".tmp")
        try:
            async with (
                FirecrackerApi.open(handle.plan.control_socket, timeout=timeout) as api,
                api.paused(),
            ):
                await api.put(
                    "/snapshot/create",
                    {
                        "snapshot_type": "Full",
                        "snapshot_path": str(tmp_state),
                        "mem_file_path": str(tmp_mem),
                    },
                )
                if while_paused is not None:
                    await while_paused()
            os.replace(tmp_mem, mem_file)
            os.replace(tmp_state, state_file)
        finally:
            tmp_state.unlink(missing_ok=True)
            tmp_mem.unlink(missing_ok=True)
        log.info("firecracker.snapshot", pid=handle.pid, path=str(path))

    def agent_endpoint(self, plan: LaunchPlan) -> AgentEndpoint:
        return HybridVsockEndpoint(plan.agent_socket, AGENT_VSOCK_PORT)


async def _ctrl_alt_del(handle: vmm.VmmProcess) -> None:
    try:
        async with FirecrackerApi.open(handle.plan.control_socket, timeout=1.0) as api:
            if await api.state() == "Running":
                await api.put("/actions", {"action_type": "SendCtrlAltDel"})
    except BackendError as exc:
        log.info("firecracker.ctrl_alt_del_failed", pid=handle.pid, error=exc.message)


def factory() -> FirecrackerBackend:
    return FirecrackerBackend()
