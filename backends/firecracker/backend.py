"""The Firecracker backend: one ``firecracker --api-sock RUN/fc.sock`` per VM, configured over REST.

Process rules (the same as QEMU's, because a leaked VMM is the worst failure):
* Firecracker runs in its own session with the run directory as working
  directory (the vsock socket path is relative, see ``config``); its stdout is
  the guest serial console (``console.log``), its own log goes to
  ``firecracker.log`` once the logger is configured.
* ``start`` returns only after ``InstanceStart`` (or ``snapshot/load``)
  succeeded. Any failure on the way — a refused API call, the process dying,
  cancellation — kills and reaps the process and removes the run directory's
  sockets before the exception leaves.
* ``stop`` is shielded: ``SendCtrlAltDel`` to a running guest, a grace period,
  then SIGKILL, checked against the recorded process start time.

``/dev/kvm`` is mandatory. On a host that is itself a VM (nested
virtualization) KVM works but guests run far slower than on bare metal;
``availability`` says so in its reason rather than pretending either way.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

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
from mvm.backends.fetch_firecracker import cached_binary
from mvm.backends.firecracker.api import FirecrackerApi, FirecrackerApiError
from mvm.backends.firecracker.config import ApiCall, FcPaths, config_calls, snapshot_files
from mvm.backends.guest.protocol import AGENT_VSOCK_PORT
from mvm.backends.hybrid_vsock import HybridVsockEndpoint
from mvm.backends.qemu.backend import check_inputs
from mvm.engine.errors import BackendError, BackendUnavailable, ConfigError
from mvm.engine.paths import CHILD_UMASK, ensure_private_dir, private_opener
from mvm.engine.process import (
    is_same_process,
    kill_verified,
    process_start_time,
    wait_process_exit,
)
from mvm.engine.runfiles import remove_run_files

log = structlog.get_logger("mvm.firecracker")

BINARY_ENV = "MVM_FIRECRACKER"
SETUP_HINT = "run `python -m mvm.backends.fetch_firecracker` or set MVM_FIRECRACKER"
START_TIMEOUT_S = 10.0
UNKNOWN_STATUS = -1  # exit status of a VMM that is not our child (adopted)
_KVM_GET_API_VERSION = 0xAE00
_KVM_API_VERSION = 12


class FirecrackerKvmError(BackendError):
    """Firecracker could not use KVM to create or run the VM."""

    code = "E_FC_KVM"


# -- host checks ---------------------------------------------------------------------------


def find_binary() -> Path | None:
    """``$MVM_FIRECRACKER``, else ``firecracker`` on PATH, else the fetched cache copy."""
    explicit = os.environ.get(BINARY_ENV)
    if explicit:
        path = Path(explicit)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which("firecracker")
    return Path(found) if found else cached_binary()


@attrs.frozen
class KvmStatus:
    usable: bool
    nested: bool
    reason: str


def host_is_vm(cpuinfo: str) -> bool:
    """The CPUID hypervisor bit: KVM here is nested, so guests run without full speed."""
    return bool(re.search(r"^flags\s*:.*\bhypervisor\b", cpuinfo, re.MULTILINE))


@functools.cache
def kvm_status(device: str = "/dev/kvm") -> KvmStatus:
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return KvmStatus(False, False, f"{device} is not usable: {exc.strerror or exc}")
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
    except OSError as exc:
        return KvmStatus(False, False, f"{device} rejects KVM_GET_API_VERSION: {exc.strerror}")
    finally:
        os.close(fd)
    if version != _KVM_API_VERSION:
        return KvmStatus(False, False, f"{device} speaks KVM API {version}, not 12")
    try:
        nested = host_is_vm(Path("/proc/cpuinfo").read_text())
    except OSError:
        nested = False
    if nested:
        return KvmStatus(
            True,
            True,
            f"{device} works but this host is itself a VM (nested KVM): "
            "guests boot and run much slower than on bare metal",
        )
    return KvmStatus(True, False, f"{device} usable")


NESTED_HINT = (
    "this host is a VM whose nested KVM failed a test boot (see `mvmctl doctor`); "
    "use the qemu backend, which falls back to TCG"
)


def guests_run_under_kvm() -> bool:
    """Whether a real (tiny) guest boots under KVM here: the QEMU accel probe's verdict.

    /dev/kvm answering ioctls is not enough on nested hosts, where a guest may never
    get past early boot. The verdict is cached per host boot; without QEMU installed
    there is nothing to probe with, so KVM is given the benefit of the doubt."""
    from mvm.backends.qemu.accel import QEMU_BINARY, kvm_verdict

    if shutil.which(QEMU_BINARY) is None:
        return True
    works, _ = kvm_verdict()
    return works


# -- handle ------------------------------------------------------------------------------


@attrs.define
class FirecrackerHandle:
    """A Firecracker process; ``proc`` is set when this process spawned it (so it can reap)."""

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


def _vm_id(name: str) -> str:
    """Firecracker's ``--id`` allows ``[A-Za-z0-9-]{1,64}``."""
    return (re.sub(r"[^A-Za-z0-9-]", "-", name)[:64]) or "mvm"


def _last_line(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _own(handle: VmmHandle) -> FirecrackerHandle:
    if not isinstance(handle, FirecrackerHandle):
        raise TypeError(f"not a Firecracker handle: {handle!r}")
    return handle


# -- backend -----------------------------------------------------------------------------


class FirecrackerBackend:
    name = "firecracker"

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
        # prepare() is pure, but the API calls it derives are not part of LaunchPlan:
        # start() takes them from here (same backend instance, as RuntimeVM uses it).
        self._calls: dict[LaunchPlan, tuple[ApiCall, ...]] = {}

    def binary(self) -> Path | None:
        if self._binary is not None:
            return self._binary if self._binary.is_file() else None
        return find_binary()

    def availability(self) -> Availability:
        binary = self.binary()
        if binary is None:
            where = self._binary or os.environ.get(BINARY_ENV) or "PATH or the mvm cache"
            return Availability(False, f"firecracker binary not found ({where}); {SETUP_HINT}")
        kvm = kvm_status(self.kvm_device)
        if not kvm.usable:
            return Availability(False, f"Firecracker needs KVM: {kvm.reason}")
        if kvm.nested and not guests_run_under_kvm():
            return Availability(False, f"Firecracker needs KVM that runs guests: {NESTED_HINT}")
        return Availability(True, f"{binary}; {kvm.reason}")

    # -- planning --------------------------------------------------------------------------

    def prepare(self, spec: VmSpec) -> LaunchPlan:
        if spec.accel is Accel.TCG:
            raise ConfigError(
                "Firecracker runs only with KVM; TCG was requested",
                code="E_FC_ACCEL",
                hint="use the qemu backend for TCG",
            )
        check_inputs(None if spec.incoming else spec.kernel, spec.rootfs, spec.incoming)
        if spec.incoming is not None and not snapshot_files(spec.incoming)[1].is_file():
            raise ConfigError(
                f"snapshot memory file {snapshot_files(spec.incoming)[1]} does not exist",
                code="E_SNAPSHOT_MISSING",
            )
        for drive in spec.drives:
            if not drive.path.exists():
                raise ConfigError(f"drive {drive.path} does not exist", code="E_DRIVE_MISSING")
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
        )
        self._calls[plan] = tuple(calls)
        return plan

    def api_calls(self, plan: LaunchPlan) -> tuple[ApiCall, ...]:
        """The configuration ``start`` will send for ``plan`` (for doctor and tests)."""
        return self._calls.get(plan, ())

    # -- process ---------------------------------------------------------------------------

    async def spawn(self, plan: LaunchPlan) -> FirecrackerHandle:
        """Start the process and wait until its API answers; configures nothing."""
        paths = FcPaths(plan.run_dir)
        ensure_private_dir(plan.run_dir)
        for stale in (paths.api, paths.vsock, paths.pid):
            stale.unlink(missing_ok=True)
        for sink in (paths.log, paths.metrics):  # Firecracker refuses a missing log file
            sink.touch()
        try:
            with open(plan.console_log, "ab", opener=private_opener) as console:
                proc = subprocess.Popen(
                    list(plan.argv),
                    umask=CHILD_UMASK,
                    cwd=plan.run_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise BackendUnavailable(
                f"cannot run {plan.argv[0]}: {exc.strerror or exc}",
                code="E_FC_BINARY",
                hint=SETUP_HINT,
            ) from None
        handle = FirecrackerHandle(proc.pid, plan, process_start_time(proc.pid), proc)
        try:
            await self._wait_api(handle)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._kill(handle)
                remove_run_files(plan.run_dir)
            raise
        plan.pid_file.write_text(f"{proc.pid}\n")
        return handle

    async def _wait_api(self, handle: FirecrackerHandle) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            status = handle.status()
            if status is not None:
                line = _last_line(handle.plan.console_log) or "no output"
                raise BackendError(
                    f"Firecracker exited during start (status {status}): {line}",
                    code="E_VMM_START",
                    hint=f"log: {handle.plan.console_log}",
                )
            if handle.plan.control_socket.exists():
                with contextlib.suppress(BackendError):
                    async with FirecrackerApi.open(handle.plan.control_socket, timeout=1.0) as api:
                        await api.get("/")
                        return
            if time.monotonic() > deadline:
                raise BackendError(
                    f"Firecracker did not open its API socket within {self.start_timeout:g} s",
                    code="E_VMM_START",
                )
            await anyio.sleep(0.005)

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
                        line = _last_line(FcPaths(handle.plan.run_dir).log) or _last_line(
                            handle.plan.console_log
                        )
                        raise BackendError(
                            f"Firecracker exited during {call.method} {call.path}: {line}",
                            code="E_VMM_START",
                        ) from None
                    raise

    async def start(self, plan: LaunchPlan, *, detached: bool = False) -> FirecrackerHandle:
        """Spawn, configure and boot (or restore); returns once the VM runs."""
        calls = self._calls.pop(plan, None)
        if calls is None:
            raise BackendError(
                "this launch plan was not prepared by this Firecracker backend",
                code="E_FC_PLAN",
                hint="call prepare() and start() on the same backend object",
            )
        t0 = time.monotonic()
        handle = await self.spawn(plan)
        try:
            await self.configure(handle, calls)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._kill(handle)
                remove_run_files(plan.run_dir)
            raise
        log.info(
            "firecracker.started",
            pid=handle.pid,
            detached=detached,
            restored=any(c.path == "/snapshot/load" for c in calls),
            ms=round((time.monotonic() - t0) * 1000, 1),
        )
        return handle

    def attach(self, plan: LaunchPlan, pid: int) -> FirecrackerHandle:
        return FirecrackerHandle(pid, plan, process_start_time(pid), None)

    async def wait(self, handle: VmmHandle) -> int:
        """Firecracker's exit status for a child, UNKNOWN_STATUS for an adopted VMM."""
        h = _own(handle)
        if h.proc is not None:
            await wait_process_exit(h.pid)
            return h.proc.wait()  # already exited: reaping does not block
        await wait_process_exit(h.pid, h.start_time)
        return UNKNOWN_STATUS

    async def stop(self, handle: VmmHandle, *, grace: float = 5.0) -> int:
        h = _own(handle)
        with anyio.CancelScope(shield=True):
            if h.alive() and grace > 0:
                try:
                    async with FirecrackerApi.open(h.plan.control_socket, timeout=1.0) as api:
                        if await api.state() == "Running":
                            await api.put("/actions", {"action_type": "SendCtrlAltDel"})
                except BackendError as exc:
                    log.info("firecracker.ctrl_alt_del_failed", pid=h.pid, error=exc.message)
                with anyio.move_on_after(grace):
                    await self.wait(h)
            status = await self._kill(h)
            remove_run_files(h.plan.run_dir)
        log.info("firecracker.stopped", pid=h.pid, status=status)
        return status

    async def _kill(self, h: FirecrackerHandle) -> int:
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
            raise BackendError(f"Firecracker pid {h.pid} survived SIGKILL", code="E_VMM_STOP")
        return status

    # -- control over the API --------------------------------------------------------------

    async def pause(self, handle: VmmHandle) -> None:
        async with FirecrackerApi.open(handle.plan.control_socket) as api:
            await api.patch("/vm", {"state": "Paused"})

    async def resume(self, handle: VmmHandle) -> None:
        async with FirecrackerApi.open(handle.plan.control_socket) as api:
            await api.patch("/vm", {"state": "Resumed"})

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
            async with FirecrackerApi.open(handle.plan.control_socket, timeout=timeout) as api:
                running = await api.state() == "Running"
                if running:
                    await api.patch("/vm", {"state": "Paused"})
                try:
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
                finally:
                    if running:
                        with anyio.CancelScope(shield=True):
                            await api.patch("/vm", {"state": "Resumed"})
            os.replace(tmp_mem, mem_file)
            os.replace(tmp_state, state_file)
        finally:
            tmp_state.unlink(missing_ok=True)
            tmp_mem.unlink(missing_ok=True)
        log.info("firecracker.snapshot", pid=handle.pid, path=str(path))

    def agent_endpoint(self, plan: LaunchPlan) -> AgentEndpoint:
        return HybridVsockEndpoint(plan.agent_socket, AGENT_VSOCK_PORT)


def factory() -> FirecrackerBackend:
    return FirecrackerBackend()
