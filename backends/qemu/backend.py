"""The QEMU backend: ``-M microvm`` guests, KVM when it truly works, TCG otherwise.

Process rules, because a leaked QEMU is the worst failure a VM manager has:
* QEMU runs in its own session (``start_new_session``): Ctrl-C in the caller's
  terminal must not reach it; the engine tears it down itself, in order.
* ``start`` returns only once QMP answers; if QEMU dies first the error carries
  its last stderr line; if ``start`` fails or is cancelled after spawning,
  the process is killed and reaped before the exception leaves.
* ``stop`` is shielded: QMP ``quit`` (SIGTERM if QMP is unreachable), a grace
  period, then SIGKILL, every signal checked against the recorded process start
  time so a recycled pid is never hit; then the run directory's sockets and pid
  file go.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
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
from mvm.backends.qemu.accel import QEMU_BINARY, host_tsc_khz, resolve_accel
from mvm.backends.qemu.argv import AGENT_VSOCK_PORT, RunPaths, build_argv
from mvm.backends.qemu.endpoint import UnixSocketEndpoint, VsockEndpoint, parse_vsock_address
from mvm.backends.qemu.qmp import QmpClient
from mvm.engine.errors import BackendError, ConfigError
from mvm.engine.paths import CHILD_UMASK, ensure_private_dir, private_opener
from mvm.engine.process import (
    is_same_process,
    kill_verified,
    process_start_time,
    wait_process_exit,
)
from mvm.engine.runfiles import remove_run_files

log = structlog.get_logger("mvm.qemu")

SETUP_HINT = "install qemu-system-x86: run ./scripts/setup"
START_TIMEOUT_S = 15.0
UNKNOWN_STATUS = -1  # exit status of a VMM that is not our child (adopted)
_POLL_S = 0.02


@attrs.define
class QemuHandle:
    """A QEMU process; ``proc`` is set when this process spawned it (so it can reap it)."""

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
        """Exit status once exited (UNKNOWN_STATUS for an adopted VMM), else None."""
        if self.proc is not None:
            return self.proc.poll()
        return None if self.alive() else UNKNOWN_STATUS


def vsock_cid_for(run_dir: Path) -> int:
    """A stable guest CID per run directory (0-2 are reserved, 2**32-1 is "any")."""
    digest = hashlib.sha256(str(run_dir).encode()).digest()
    return 3 + int.from_bytes(digest[:4], "big") % (2**31 - 3)


def _argv_value(argv: tuple[str, ...], flag: str) -> str | None:
    for i, item in enumerate(argv[:-1]):
        if item == flag:
            return argv[i + 1]
    return None


def _root_drive(argv: tuple[str, ...]) -> Path | None:
    for i, item in enumerate(argv[:-1]):
        if item == "-drive" and argv[i + 1].startswith("id=root,"):
            rest = argv[i + 1].removeprefix("id=root,file=")
            # The path ends at the first single comma (doubled commas are escaped ones).
            out, j = [], 0
            while j < len(rest):
                if rest[j] == ",":
                    if rest[j + 1 : j + 2] != ",":
                        break
                    j += 1
                out.append(rest[j])
                j += 1
            return Path("".join(out))
    return None


def _incoming_file(argv: tuple[str, ...]) -> Path | None:
    value = _argv_value(argv, "-incoming")
    if value is None or not value.startswith("exec:cat "):
        return None
    parts = shlex.split(value.removeprefix("exec:cat "))
    return Path(parts[0]) if len(parts) == 1 else None


def check_inputs(kernel: Path | None, rootfs: Path | None, incoming: Path | None) -> None:
    """Missing inputs fail here with a coded one-liner, before anything is spawned."""
    if kernel is not None and not kernel.is_file():
        raise ConfigError(
            f"kernel {kernel} does not exist",
            code="E_KERNEL_MISSING",
            hint="rebuild the image (mvmctl build) or set MVM_KERNEL",
        )
    if rootfs is not None and not rootfs.is_file():
        raise ConfigError(
            f"root filesystem {rootfs} does not exist",
            code="E_ROOTFS_MISSING",
            hint="rebuild the image (mvmctl build)",
        )
    if incoming is not None and not incoming.is_file():
        raise ConfigError(f"snapshot {incoming} does not exist", code="E_SNAPSHOT_MISSING")


def _last_line(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class QemuBackend:
    name = "qemu"

    def __init__(
        self,
        *,
        qemu: str = QEMU_BINARY,
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
        check_inputs(spec.kernel, spec.rootfs, spec.incoming)
        for drive in spec.drives:
            if not drive.path.exists():
                raise ConfigError(f"drive {drive.path} does not exist", code="E_DRIVE_MISSING")
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
        )

    # -- process -------------------------------------------------------------------------

    async def start(self, plan: LaunchPlan, *, detached: bool = False) -> QemuHandle:
        """Spawn QEMU and return once its QMP socket answers.

        ``detached`` changes nothing here: QEMU always gets its own session, and
        whether it outlives the engine is the engine's decision."""
        kernel = _argv_value(plan.argv, "-kernel")
        check_inputs(
            Path(kernel) if kernel else None, _root_drive(plan.argv), _incoming_file(plan.argv)
        )
        ensure_private_dir(plan.run_dir)
        for stale in (plan.control_socket, plan.agent_socket, plan.pid_file):
            if stale.name.endswith((".sock", ".pid")):
                stale.unlink(missing_ok=True)
        stderr_path = RunPaths(plan.run_dir).stderr
        t0 = time.monotonic()
        with open(stderr_path, "wb", opener=private_opener) as errlog:
            try:
                proc = subprocess.Popen(
                    list(plan.argv),
                    umask=CHILD_UMASK,
                    stdin=subprocess.DEVNULL,
                    stdout=errlog,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise BackendError(
                    f"cannot run {plan.argv[0]}: {exc.strerror or exc}",
                    code="E_VMM_START",
                    hint=SETUP_HINT,
                ) from None
        handle = QemuHandle(proc.pid, plan, process_start_time(proc.pid), proc)
        try:
            await self._wait_ready(handle, stderr_path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._kill(handle)
                remove_run_files(plan.run_dir)
            raise
        log.info(
            "qemu.started",
            pid=proc.pid,
            accel=plan.accel.value,
            detached=detached,
            ms=round((time.monotonic() - t0) * 1000, 1),
        )
        return handle

    async def _wait_ready(self, handle: QemuHandle, stderr_path: Path) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            status = handle.status()
            if status is not None:
                line = _last_line(stderr_path) or "no error output"
                raise BackendError(
                    f"QEMU exited during start (status {status}): {line}",
                    code="E_VMM_START",
                    hint=f"full log: {stderr_path}",
                )
            if handle.plan.control_socket.exists():
                try:
                    async with QmpClient.connect(handle.plan.control_socket, timeout=2.0):
                        return
                except BackendError:
                    pass  # bound but not accepting yet, or QEMU is exiting
            if time.monotonic() > deadline:
                raise BackendError(
                    f"QEMU did not open its QMP socket within {self.start_timeout:g} s",
                    code="E_VMM_START",
                    hint=f"log: {stderr_path}",
                )
            await anyio.sleep(0.005)

    def attach(self, plan: LaunchPlan, pid: int) -> QemuHandle:
        return QemuHandle(pid, plan, process_start_time(pid), None)

    async def wait(self, handle: VmmHandle) -> int:
        """The exit status: QEMU's own for a child, UNKNOWN_STATUS for an adopted VMM."""
        h = _own(handle)
        while True:
            status = h.status()
            if status is not None:
                return status
            # Woken by the kernel when QEMU exits (pidfd): an idle VM costs the engine
            # nothing. Polling every 20 ms cost ~5 ms of CPU per VM per second.
            await wait_process_exit(h.pid, h.start_time)
            if h.status() is None:
                await anyio.sleep(_POLL_S)  # exited but not yet reapable: rare, brief

    async def stop(self, handle: VmmHandle, *, grace: float = 5.0) -> int:
        h = _own(handle)
        status = UNKNOWN_STATUS
        with anyio.CancelScope(shield=True):
            if h.alive():
                try:
                    async with QmpClient.connect(h.plan.control_socket, timeout=1.0) as qmp:
                        await qmp.execute("quit", timeout=1.0)
                except BackendError as exc:
                    if exc.code != "E_QMP_CLOSED":  # closed = quit already took effect
                        log.info("qemu.quit_failed", pid=h.pid, error=exc.message)
                        kill_verified(h.pid, h.start_time, signal.SIGTERM)
                with anyio.move_on_after(grace):
                    await self.wait(h)
            status = await self._kill(h)
            remove_run_files(h.plan.run_dir)
        log.info("qemu.stopped", pid=h.pid, status=status)
        return status

    async def _kill(self, h: QemuHandle) -> int:
        """SIGKILL unless gone, then reap. Only ever signals the recorded process."""
        if h.alive():
            if h.proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    h.proc.kill()  # our child: the pid cannot be reused before we reap it
            else:
                kill_verified(h.pid, h.start_time, signal.SIGKILL)
            log.warning("qemu.killed", pid=h.pid)
        status: int | None = None
        with anyio.move_on_after(10):
            status = await self.wait(h)
        if status is not None:
            return status
        raise BackendError(f"QEMU pid {h.pid} survived SIGKILL", code="E_VMM_STOP")

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


def _own(handle: VmmHandle) -> QemuHandle:
    if not isinstance(handle, QemuHandle):
        raise TypeError(f"not a QEMU handle: {handle!r}")
    return handle
