"""The QEMU backend: ``-M microvm`` guests, KVM when it truly works, TCG otherwise.

The process rules (own session, kill-on-failed-start, shielded stop with
SIGKILL after the grace, start-time-checked signals) are every VMM's and live in
``mvm.backends.vmm``. What is QEMU's here: the argv is the whole configuration
(``start`` runs ``plan.argv`` as given), readiness is QMP answering, and the
graceful stop is QMP ``quit`` (SIGTERM if QMP is unreachable).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import time
from pathlib import Path

import anyio
import attrs

from mvm.backends import vmm
from mvm.backends.abc.types import (
    Accel,
    AgentEndpoint,
    Availability,
    LaunchInputs,
    LaunchPlan,
    PausedHook,
    VmmHandle,
    VmSpec,
)
from mvm.backends.qemu.accel import host_tsc_khz, resolve_accel
from mvm.backends.qemu.argv import AGENT_VSOCK_PORT, RunPaths, build_argv
from mvm.backends.qemu.endpoint import UnixSocketEndpoint, VsockEndpoint, parse_vsock_address
from mvm.backends.qemu.qmp import QmpClient
from mvm.engine.base.errors import BackendError, ConfigError
from mvm.engine.base.log import get_logger

log = get_logger("mvm.qemu")

SETUP_HINT = "install qemu-system-x86: run ./scripts/setup"
START_TIMEOUT_S = 15.0


@attrs.define
class QemuHandle(vmm.VmmProcess):
    """A QEMU process (the shared VMM handle; the type tells backends apart)."""


KIND = vmm.VmmKind(
    label="QEMU",
    event="qemu",
    exec_error=lambda message: BackendError(message, code="E_VMM_START", hint=SETUP_HINT),
)


def vsock_cid_for(run_dir: Path) -> int:
    """A stable guest CID per run directory (0-2 are reserved, 2**32-1 is "any")."""
    digest = hashlib.sha256(str(run_dir).encode()).digest()
    return 3 + int.from_bytes(digest[:4], "big") % (2**31 - 3)


async def _qmp_answers(socket: Path) -> None:
    async with QmpClient.connect(socket, timeout=2.0):
        return


class QemuBackend(vmm.ProcessControl[QemuHandle]):
    name = "qemu"
    handle_type = QemuHandle
    kind = KIND

    def __init__(
        self,
        *,
        qemu: str = vmm.QEMU_BINARY,
        vsock: bool | None = None,
        start_timeout: float = START_TIMEOUT_S,
    ) -> None:
        """``vsock=None`` uses vhost-vsock when the host has ``/dev/vhost-vsock``."""
        self.qemu = qemu
        self.vsock = vsock
        self.start_timeout = start_timeout

    # -- planning ------------------------------------------------------------------------

    def availability(self) -> Availability:
        path = shutil.which(self.qemu)
        if path is None:
            return Availability(False, f"{self.qemu} not found on PATH ({SETUP_HINT})")
        return Availability(True, f"{path}")

    def _use_vsock(self, spec: VmSpec) -> bool:
        host_has_it = self.vsock if self.vsock is not None else Path("/dev/vhost-vsock").exists()
        if spec.agent_vsock is None:
            return host_has_it
        if spec.agent_vsock and not host_has_it:
            raise ConfigError(
                f"{spec.name}: the snapshot's agent channel is vhost-vsock, which this host "
                "lacks (no /dev/vhost-vsock)",
                code="E_SNAPSHOT_TRANSPORT",
                hint="clone it on a host with vhost-vsock (modprobe vhost_vsock), or snapshot "
                "a VM started here",
            )
        # A new run dir is a new guest CID: after the restore QEMU sends the guest a
        # vsock transport reset, and the guest driver re-reads its CID from the device.
        return spec.agent_vsock

    def prepare(self, spec: VmSpec) -> LaunchPlan:
        vmm.check_inputs(spec.kernel, spec.rootfs, spec.incoming, spec.drives)
        accel = resolve_accel(spec.accel)
        tsc = host_tsc_khz() if accel is Accel.TCG else None
        cid = vsock_cid_for(spec.run_dir) if self._use_vsock(spec) else None
        argv, cmdline = build_argv(spec, accel=accel, tsc_khz=tsc, vsock_cid=cid, qemu=self.qemu)
        paths = RunPaths(spec.run_dir)
        agent = spec.run_dir / f"vsock-{cid}-{AGENT_VSOCK_PORT}" if cid is not None else paths.agent
        return LaunchPlan(
            backend=self.name,
            argv=tuple(argv),
            run_dir=spec.run_dir,
            control_socket=paths.qmp,
            agent_socket=agent,
            console_log=paths.console,
            pid_file=paths.pid,
            accel=accel,
            kernel_cmdline=cmdline,
            inputs=LaunchInputs(spec.kernel, spec.rootfs, spec.incoming),
        )

    # -- process -------------------------------------------------------------------------

    async def start(self, plan: LaunchPlan, *, detached: bool = False) -> QemuHandle:
        """Spawn ``plan.argv`` and return once its QMP socket answers.

        ``detached`` changes nothing here: QEMU always gets its own session, and
        whether it outlives the engine is the engine's decision."""
        vmm.check_plan_inputs(plan.inputs)
        t0 = time.monotonic()
        opts = vmm.SpawnOptions(output=RunPaths(plan.run_dir).stderr)
        handle = await vmm.launch(
            KIND, QemuHandle, plan, opts, _qmp_answers, timeout=self.start_timeout
        )
        vmm.log_started(KIND, handle, t0, accel=plan.accel.value, detached=detached)
        return handle

    async def stop(self, handle: VmmHandle, *, grace: float = 5.0) -> int:
        """QMP ``quit`` (SIGTERM if QMP is unreachable), ``grace`` s, then SIGKILL."""
        return await self.stop_with(handle, _quit, grace)

    # -- control over QMP ----------------------------------------------------------------

    async def pause(self, handle: VmmHandle) -> None:
        async with QmpClient.connect(handle.plan.control_socket) as qmp:
            await qmp.execute("stop")

    async def resume(self, handle: VmmHandle) -> None:
        async with QmpClient.connect(handle.plan.control_socket) as qmp:
            await qmp.execute("cont")

    async def snapshot(
        self,
        handle: VmmHandle,
        path: Path,
        *,
        while_paused: PausedHook | None = None,
        timeout: float = 300.0,
    ) -> None:
        """Save the VM's full state to ``path`` (a QEMU migration stream).

        The VM keeps running afterwards if it was running. Boot a copy with
        ``VmSpec(incoming=path)`` and the same disks; it resumes where this one was."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            async with QmpClient.connect(handle.plan.control_socket) as qmp:
                running = bool((await qmp.execute("query-status")).get("running"))
                await qmp.execute("migrate", {"uri": f"exec:cat > {shlex.quote(str(tmp))}"})
                await _migration_done(qmp, timeout)
                os.replace(tmp, path)
                try:
                    if while_paused is not None:  # disks are flushed and inactive here
                        await while_paused()
                finally:
                    if running:  # the source is left in "postmigrate" (paused) otherwise
                        with anyio.CancelScope(shield=True):
                            await qmp.execute("cont")
        finally:
            tmp.unlink(missing_ok=True)
        log.info("qemu.snapshot", pid=handle.pid, path=str(path))

    def agent_endpoint(self, plan: LaunchPlan) -> AgentEndpoint:
        vsock = parse_vsock_address(plan.agent_socket)
        if vsock is not None:
            return VsockEndpoint(*vsock)
        return UnixSocketEndpoint(plan.agent_socket)


async def _migration_done(qmp: QmpClient, timeout: float) -> None:
    try:
        with anyio.fail_after(timeout):
            while True:
                info = await qmp.execute("query-migrate")
                state = info.get("status")
                if state == "completed":
                    return
                if state in ("failed", "cancelled"):
                    raise BackendError(
                        f"snapshot failed: {info.get('error-desc', state)}", code="E_SNAPSHOT"
                    )
                await anyio.sleep(0.02)
    except TimeoutError:
        with contextlib.suppress(BackendError):
            await qmp.execute("migrate_cancel")
        raise BackendError(
            f"snapshot did not finish within {timeout:g} s", code="E_SNAPSHOT"
        ) from None


async def _quit(handle: vmm.VmmProcess) -> None:
    try:
        async with QmpClient.connect(handle.plan.control_socket, timeout=1.0) as qmp:
            await qmp.execute("quit", timeout=1.0)
    except BackendError as exc:
        if exc.code != "E_QMP_CLOSED":  # closed = quit already took effect
            log.info("qemu.quit_failed", pid=handle.pid, error=exc.message)
            vmm.terminate(handle)
