"""The Cloud Hypervisor backend: ``cloud-hypervisor --api-socket path=RUN/ch.sock`` per VM.

The VMM starts empty; the plan's ``api_calls`` are ``vm.create`` with the whole
VmConfig and then ``vm.boot`` (or ``vm.restore`` + ``vm.resume`` for a
snapshot), and ``start`` sends them as given. The process rules are every VMM's
(``mvm.backends.vmm``); the graceful stop is the ACPI power button, a grace
period, then ``vmm.shutdown``. The agent is reached over hybrid vsock (port 5252),
the same ``CONNECT``/``OK`` protocol as Firecracker's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
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
from mvm.backends.cloud_hypervisor.api import ChApi
from mvm.backends.cloud_hypervisor.config import ChPaths, cmdline, snapshot_url, vm_config
from mvm.backends.guest.protocol import AGENT_VSOCK_PORT
from mvm.backends.vmm.hybrid_vsock import HybridVsockEndpoint
from mvm.backends.vmm.rest import RestControl
from mvm.engine.base.errors import BackendError, BackendUnavailable, ConfigError
from mvm.engine.base.log import get_logger

log = get_logger("mvm.cloud_hypervisor")

SETUP_HINT = "install cloud-hypervisor (no Debian 12 or PyPI package) or set MVM_CLOUD_HYPERVISOR"
START_TIMEOUT_S = 10.0


def find_binary() -> Path | None:
    """``$MVM_CLOUD_HYPERVISOR``, else ``cloud-hypervisor`` on PATH."""
    return vmm.find_program("cloud-hypervisor")


@attrs.define
class ChHandle(vmm.VmmProcess):
    """A Cloud Hypervisor process (the shared VMM handle; the type tells backends apart)."""


KIND = vmm.VmmKind(
    label="Cloud Hypervisor",
    event="cloud_hypervisor",
    exec_error=lambda message: BackendUnavailable(message, code="E_CH_BINARY", hint=SETUP_HINT),
)

_CREATE = "vm.create"
_RESTORE = "vm.restore"


async def _ping(socket: Path) -> None:
    async with ChApi.open(socket, timeout=1.0) as api:
        await api.get("vmm.ping")


async def _send(handle: ChHandle, calls: tuple[ApiCall, ...]) -> None:
    async with ChApi.open(handle.plan.control_socket) as api:
        for call in calls:
            await api.call(call)


class CloudHypervisorBackend(RestControl[ChHandle]):
    name = "cloud-hypervisor"
    handle_type = ChHandle
    kind = KIND
    api_type = ChApi

    def __init__(
        self,
        *,
        binary: Path | None = None,
        start_timeout: float = START_TIMEOUT_S,
        kvm_device: str = "/dev/kvm",
        check_kvm: bool = True,
    ) -> None:
        """``check_kvm=False`` is for API-level tests against a stand-in VMM."""
        self._binary = binary
        self.start_timeout = start_timeout
        self.kvm_device = kvm_device
        self.check_kvm = check_kvm

    def binary(self) -> Path | None:
        return vmm.resolve_binary(self._binary, find_binary)

    def availability(self) -> Availability:
        binary = self.binary()
        if binary is None:
            return Availability(False, f"cloud-hypervisor binary not found ({SETUP_HINT})")
        if self.check_kvm:
            return vmm.kvm_availability(KIND.label, binary, vmm.kvm_status(self.kvm_device))
        return Availability(True, str(binary))

    def prepare(self, spec: VmSpec) -> LaunchPlan:
        vmm.refuse_tcg(KIND.label, spec.accel, code="E_CH_ACCEL")
        if spec.incoming is not None:
            if not (spec.incoming / "config.json").is_file():
                raise ConfigError(
                    f"{spec.incoming} is not a Cloud Hypervisor snapshot directory",
                    code="E_SNAPSHOT_MISSING",
                )
            calls = (
                ApiCall("PUT", _RESTORE, {"source_url": snapshot_url(spec.incoming)}),
                ApiCall("PUT", "vm.resume"),
            )
            inputs = LaunchInputs()  # a directory, checked above (config.json)
        else:
            vmm.check_inputs(spec.kernel, spec.rootfs, None, spec.drives)
            calls = (ApiCall("PUT", _CREATE, vm_config(spec)), ApiCall("PUT", "vm.boot"))
            inputs = LaunchInputs(spec.kernel, spec.rootfs)
        binary = self.binary()
        if binary is None:
            raise BackendUnavailable(
                "cloud-hypervisor binary not found", code="E_CH_BINARY", hint=SETUP_HINT
            )
        paths = ChPaths(spec.run_dir)
        plan = LaunchPlan(
            backend=self.name,
            argv=(str(binary), "--api-socket", f"path={paths.api}", "--log-file", str(paths.log)),
            run_dir=spec.run_dir,
            control_socket=paths.api,
            agent_socket=paths.vsock,
            console_log=paths.console,
            pid_file=paths.pid,
            accel=Accel.KVM,
            kernel_cmdline="" if spec.incoming else cmdline(spec),
            api_calls=calls,
            inputs=inputs,
        )
        return plan

    def vm_config(self, plan: LaunchPlan) -> dict[str, Any] | None:
        """The VmConfig ``start`` sends with ``vm.create`` (None for a restore)."""
        return next((c.body for c in plan.api_calls if c.path == _CREATE), None)

    # -- process ---------------------------------------------------------------------------

    async def spawn(self, plan: LaunchPlan) -> ChHandle:
        """Start the empty VMM and wait for ``vmm.ping``; creates no VM."""
        paths = ChPaths(plan.run_dir)
        opts = vmm.SpawnOptions(
            output=paths.log,
            append=True,
            cwd=plan.run_dir,
            write_pid=True,
        )
        return await vmm.launch(KIND, ChHandle, plan, opts, _ping, timeout=self.start_timeout)

    async def start(self, plan: LaunchPlan, *, detached: bool = False) -> ChHandle:
        """Spawn, then send ``plan.api_calls`` in order (create + boot, or restore +
        resume); returns once the VM runs."""
        return await vmm.start_configured(
            KIND,
            plan,
            backend=self.name,
            plan_code="E_CH_PLAN",
            spawn=self.spawn,
            configure=_send,
            restore_path=_RESTORE,
            detached=detached,
        )

    async def stop(self, handle: VmmHandle, *, grace: float = 5.0) -> int:
        """ACPI power button to a running guest (``grace`` s), then ``vmm.shutdown``,
        then SIGKILL."""

        async def graceful(h: vmm.VmmProcess) -> None:
            try:
                async with ChApi.open(h.plan.control_socket, timeout=1.0) as api:
                    if grace > 0 and await api.state() == "Running":
                        await api.put("vm.power-button")
                        with anyio.move_on_after(grace):
                            while await api.state() == "Running":
                                await anyio.sleep(0.05)
                    await api.put("vmm.shutdown")
            except BackendError as exc:
                log.info("cloud_hypervisor.shutdown_failed", pid=h.pid, error=exc.message)

        return await self.stop_with(handle, graceful, max(grace, 1.0))

    # -- control over the API (pause and resume: RestControl) ------------------------------

    async def snapshot(
        self,
        handle: VmmHandle,
        path: Path,
        *,
        while_paused: PausedHook | None = None,
        timeout: float = 300.0,
    ) -> None:
        """Snapshot into the directory ``path`` (Cloud Hypervisor's layout); only a paused
        VM can be snapshotted, so a running one is paused and resumed around it."""
        path.mkdir(parents=True, exist_ok=True)
        async with (
            ChApi.open(handle.plan.control_socket, timeout=timeout) as api,
            api.paused(),
        ):
            await api.put("vm.snapshot", {"destination_url": snapshot_url(path)})
            if while_paused is not None:
                await while_paused()
        log.info("cloud_hypervisor.snapshot", pid=handle.pid, path=str(path))

    def agent_endpoint(self, plan: LaunchPlan) -> AgentEndpoint:
        return HybridVsockEndpoint(plan.agent_socket, AGENT_VSOCK_PORT)


def factory() -> CloudHypervisorBackend:
    return CloudHypervisorBackend()
