"""The Cloud Hypervisor backend: ``cloud-hypervisor --api-socket path=RUN/ch.sock`` per VM.

The VMM starts empty; ``start`` sends ``vm.create`` with the whole VmConfig and
then ``vm.boot`` (or ``vm.restore`` + ``vm.resume`` for a snapshot). The process
rules are Firecracker's and QEMU's: own session, everything killed and the run
directory's sockets removed if ``start`` fails or is cancelled, a shielded
``stop`` (ACPI power button, grace, ``vmm.shutdown``, SIGKILL verified against
the recorded start time). The agent is reached over hybrid vsock (port 5252),
the same ``CONNECT``/``OK`` protocol as Firecracker's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import attrs
import structlog

from mvm.backends.base import (
    Accel,
    AgentEndpoint,
    Availability,
    LaunchPlan,
    PausedHook,
    VmmHandle,
    VmSpec,
)
from mvm.backends.cloud_hypervisor.api import ChApi
from mvm.backends.cloud_hypervisor.config import ChPaths, cmdline, snapshot_url, vm_config
from mvm.backends.firecracker.backend import NESTED_HINT, guests_run_under_kvm, kvm_status
from mvm.backends.guest.protocol import AGENT_VSOCK_PORT
from mvm.backends.hybrid_vsock import HybridVsockEndpoint
from mvm.backends.qemu.backend import check_inputs
from mvm.engine.errors import BackendError, BackendUnavailable, ConfigError
from mvm.engine.paths import CHILD_UMASK, ensure_private_dir
from mvm.engine.process import (
    is_same_process,
    kill_verified,
    process_start_time,
    wait_process_exit,
)
from mvm.engine.runfiles import remove_run_files

log = structlog.get_logger("mvm.cloud_hypervisor")

BINARY_ENV = "MVM_CLOUD_HYPERVISOR"
SETUP_HINT = "install cloud-hypervisor (no Debian 12 or PyPI package) or set MVM_CLOUD_HYPERVISOR"
START_TIMEOUT_S = 10.0
UNKNOWN_STATUS = -1


def find_binary() -> Path | None:
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        path = Path(explicit)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which("cloud-hypervisor")
    return Path(found) if found else None


@attrs.define
class ChHandle:
    _pid: int
    _plan: LaunchPlan
    start_time: int | None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def plan(self) -> LaunchPlan:
        return self._plan

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return is_same_process(self._pid, self.start_time)

    def status(self) -> int | None:
        if self.proc is not None:
            return self.proc.poll()
        return None if self.alive() else UNKNOWN_STATUS


def _own(handle: VmmHandle) -> ChHandle:
    if not isinstance(handle, ChHandle):
        raise TypeError(f"not a Cloud Hypervisor handle: {handle!r}")
    return handle


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


@attrs.frozen
class _Boot:
    """What ``start`` sends: a VmConfig to create and boot, or a snapshot to restore."""

    config: dict[str, Any] | None
    restore_from: Path | None


class CloudHypervisorBackend:
    name = "cloud-hypervisor"

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
        self._boots: dict[LaunchPlan, _Boot] = {}

    def binary(self) -> Path | None:
        if self._binary is not None:
            return self._binary if self._binary.is_file() else None
        return find_binary()

    def availability(self) -> Availability:
        binary = self.binary()
        if binary is None:
            return Availability(False, f"cloud-hypervisor binary not found ({SETUP_HINT})")
        if self.check_kvm:
            kvm = kvm_status(self.kvm_device)
            if not kvm.usable:
                return Availability(False, f"Cloud Hypervisor needs KVM: {kvm.reason}")
            if kvm.nested and not guests_run_under_kvm():
                return Availability(
                    False, f"Cloud Hypervisor needs KVM that runs guests: {NESTED_HINT}"
                )
            return Availability(True, f"{binary}; {kvm.reason}")
        return Availability(True, str(binary))

    def prepare(self, spec: VmSpec) -> LaunchPlan:
        if spec.accel is Accel.TCG:
            raise ConfigError(
                "Cloud Hypervisor runs only with KVM; TCG was requested",
                code="E_CH_ACCEL",
                hint="use the qemu backend for TCG",
            )
        if spec.incoming is not None:
            if not (spec.incoming / "config.json").is_file():
                raise ConfigError(
                    f"{spec.incoming} is not a Cloud Hypervisor snapshot directory",
                    code="E_SNAPSHOT_MISSING",
                )
            boot = _Boot(None, spec.incoming)
        else:
            check_inputs(spec.kernel, spec.rootfs, None)
            for drive in spec.drives:
                if not drive.path.exists():
                    raise ConfigError(f"drive {drive.path} does not exist", code="E_DRIVE_MISSING")
            boot = _Boot(vm_config(spec), None)
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
        )
        self._boots[plan] = boot
        return plan

    def vm_config(self, plan: LaunchPlan) -> dict[str, Any] | None:
        boot = self._boots.get(plan)
        return boot.config if boot else None

    # -- process ---------------------------------------------------------------------------

    async def spawn(self, plan: LaunchPlan) -> ChHandle:
        """Start the empty VMM and wait for ``vmm.ping``; creates no VM."""
        paths = ChPaths(plan.run_dir)
        ensure_private_dir(plan.run_dir)
        for stale in (paths.api, paths.vsock, paths.pid):
            stale.unlink(missing_ok=True)
        try:
            with open(paths.log, "ab") as out:
                proc = subprocess.Popen(
                    list(plan.argv),
                    umask=CHILD_UMASK,
                    cwd=plan.run_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot run {plan.argv[0]}: {exc.strerror or exc}",
                code="E_CH_BINARY",
                hint=SETUP_HINT,
            ) from None
        handle = ChHandle(proc.pid, plan, process_start_time(proc.pid), proc)
        try:
            await self._wait_api(handle)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._kill(handle)
                remove_run_files(plan.run_dir)
            raise
        plan.pid_file.write_text(f"{proc.pid}\n")
        return handle

    async def _wait_api(self, handle: ChHandle) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            status = handle.status()
            if status is not None:
                line = _last_line(ChPaths(handle.plan.run_dir).log) or "no output"
                raise BackendError(
                    f"Cloud Hypervisor exited during start (status {status}): {line}",
                    code="E_VMM_START",
                )
            if handle.plan.control_socket.exists():
                with contextlib.suppress(BackendError):
                    async with ChApi.open(handle.plan.control_socket, timeout=1.0) as api:
                        await api.get("vmm.ping")
                        return
            if time.monotonic() > deadline:
                raise BackendError(
                    f"Cloud Hypervisor did not open its API socket within {self.start_timeout:g} s",
                    code="E_VMM_START",
                )
            await anyio.sleep(0.005)

    async def start(self, plan: LaunchPlan, *, detached: bool = False) -> ChHandle:
        boot = self._boots.pop(plan, None)
        if boot is None:
            raise BackendError(
                "this launch plan was not prepared by this Cloud Hypervisor backend",
                code="E_CH_PLAN",
            )
        t0 = time.monotonic()
        handle = await self.spawn(plan)
        try:
            async with ChApi.open(plan.control_socket) as api:
                if boot.restore_from is not None:
                    await api.put("vm.restore", {"source_url": snapshot_url(boot.restore_from)})
                    await api.put("vm.resume")
                else:
                    await api.put("vm.create", boot.config)
                    await api.put("vm.boot")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._kill(handle)
                remove_run_files(plan.run_dir)
            raise
        log.info(
            "cloud_hypervisor.started",
            pid=handle.pid,
            detached=detached,
            restored=boot.restore_from is not None,
            ms=round((time.monotonic() - t0) * 1000, 1),
        )
        return handle

    def attach(self, plan: LaunchPlan, pid: int) -> ChHandle:
        return ChHandle(pid, plan, process_start_time(pid), None)

    async def wait(self, handle: VmmHandle) -> int:
        h = _own(handle)
        if h.proc is not None:
            await wait_process_exit(h.pid)
            return h.proc.wait()
        await wait_process_exit(h.pid, h.start_time)
        return UNKNOWN_STATUS

    async def stop(self, handle: VmmHandle, *, grace: float = 5.0) -> int:
        h = _own(handle)
        with anyio.CancelScope(shield=True):
            if h.alive():
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
                with anyio.move_on_after(max(grace, 1.0)):
                    await self.wait(h)
            status = await self._kill(h)
            remove_run_files(h.plan.run_dir)
        log.info("cloud_hypervisor.stopped", pid=h.pid, status=status)
        return status

    async def _kill(self, h: ChHandle) -> int:
        if h.alive():
            if h.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    h.proc.kill()
            else:
                kill_verified(h.pid, h.start_time, signal.SIGKILL)
        status: int | None = None
        with anyio.move_on_after(10):
            status = await self.wait(h)
        if status is None:
            raise BackendError(f"Cloud Hypervisor pid {h.pid} survived SIGKILL", code="E_VMM_STOP")
        return status

    # -- control ---------------------------------------------------------------------------

    async def pause(self, handle: VmmHandle) -> None:
        async with ChApi.open(handle.plan.control_socket) as api:
            await api.put("vm.pause")

    async def resume(self, handle: VmmHandle) -> None:
        async with ChApi.open(handle.plan.control_socket) as api:
            await api.put("vm.resume")

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
        async with ChApi.open(handle.plan.control_socket, timeout=timeout) as api:
            running = await api.state() == "Running"
            if running:
                await api.put("vm.pause")
            try:
                await api.put("vm.snapshot", {"destination_url": snapshot_url(path)})
                if while_paused is not None:
                    await while_paused()
            finally:
                if running:
                    with anyio.CancelScope(shield=True):
                        await api.put("vm.resume")
        log.info("cloud_hypervisor.snapshot", pid=handle.pid, path=str(path))

    def agent_endpoint(self, plan: LaunchPlan) -> AgentEndpoint:
        return HybridVsockEndpoint(plan.agent_socket, AGENT_VSOCK_PORT)


def factory() -> CloudHypervisorBackend:
    return CloudHypervisorBackend()
