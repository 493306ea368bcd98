"""One process manager for every VMM: spawn, wait-ready, wait, stop, kill.

The rules, because a leaked VMM is the worst failure a VM manager has:
* the VMM runs in its own session (Ctrl-C in the caller's terminal must not
  reach it; the engine tears it down itself, in order), with umask 077 so the
  sockets and files it creates are the user's alone, stdin closed and its
  output in a private log file;
* ``launch`` returns only once the VMM is ready (its socket exists and answers
  ``probe``); if it dies first the error carries the log's last line; if the
  wait (or, inside ``killed_on_failure``, anything after it) fails or is
  cancelled, the process is killed and reaped and the run directory's sockets
  removed before the exception leaves;
* ``stop`` is shielded: the backend's graceful request, a grace period, then
  SIGKILL; every signal to an adopted VMM is checked against its recorded start
  time, so a recycled pid is never hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import attrs

from mvm.backends.abc.types import LaunchPlan
from mvm.backends.vmm.handle import H, VmmProcess
from mvm.backends.vmm.inputs import last_line
from mvm.engine.base.errors import BackendError, MvmError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import CHILD_UMASK, ensure_private_dir, private_opener
from mvm.engine.base.process import (
    VMM_TAG_ENV,
    kill_verified,
    process_start_time,
    wait_process_exit,
)
from mvm.engine.base.runfiles import remove_run_files

log = get_logger("mvm.vmm")

_POLL_S = 0.02
_READY_POLL_S = 0.005
KILL_TIMEOUT_S = 10.0

Probe = Callable[[Path], Awaitable[None]]
"""Asks the VMM on its control socket whether it is up; raises BackendError if not yet."""


@attrs.frozen
class VmmKind:
    """What the manager needs to know about one VMM program (not about one VM)."""

    label: str  # "QEMU", "Firecracker": the subject of every message
    event: str  # log event prefix: "qemu", "firecracker"
    exec_error: Callable[[str], MvmError]  # the coded error when the binary cannot run


@attrs.frozen
class SpawnOptions:
    """How to run one VMM: its output file, working directory and the files it makes."""

    output: Path  # stdout+stderr go here (QEMU's errors, Firecracker's serial console)
    append: bool = False
    cwd: Path | None = None
    touch: tuple[Path, ...] = ()  # created first: files the VMM opens but will not create
    write_pid: bool = False  # the VMM writes no pid file itself


def stale_files(plan: LaunchPlan) -> tuple[Path, ...]:
    """The plan's sockets and pid file (``*.sock``, ``*.pid``: what ``remove_run_files``
    clears). A VMM refuses to bind a socket path a dead run left behind, and a pid file
    left by one would name a stranger; a vsock agent address is not a file and is kept."""
    own = (plan.control_socket, plan.agent_socket, plan.pid_file)
    return tuple(path for path in own if path.name.endswith((".sock", ".pid")))


def spawn(kind: VmmKind, handle_type: type[H], plan: LaunchPlan, opts: SpawnOptions) -> H:
    """Start ``plan.argv`` in its own session, after removing the plan's stale sockets
    and pid file; returns at once (not ready yet)."""
    ensure_private_dir(plan.run_dir)
    for stale in stale_files(plan):
        stale.unlink(missing_ok=True)
    for sink in opts.touch:
        sink.touch()
    try:
        with open(opts.output, "ab" if opts.append else "wb", opener=private_opener) as out:
            proc = subprocess.Popen(
                list(plan.argv),
                umask=CHILD_UMASK,
                cwd=opts.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
                env={**os.environ, VMM_TAG_ENV: str(plan.run_dir)},
            )
    except OSError as exc:
        raise kind.exec_error(f"cannot run {plan.argv[0]}: {exc.strerror or exc}") from None
    return handle_type(proc.pid, plan, process_start_time(proc.pid), proc)


async def wait_ready(
    kind: VmmKind, handle: VmmProcess, probe: Probe, *, timeout: float, log_file: Path
) -> None:
    """Until the control socket exists and ``probe`` succeeds; E_VMM_START if the VMM
    exits first (with its log's last line) or ``timeout`` passes."""
    socket = handle.plan.control_socket
    deadline = time.monotonic() + timeout
    while True:
        status = handle.status()
        if status is not None:
            line = last_line(log_file) or "no output"
            raise BackendError(
                f"{kind.label} exited during start (status {status}): {line}",
                code="E_VMM_START",
                hint=f"log: {log_file}",
            )
        if socket.exists():
            with contextlib.suppress(BackendError):  # bound but not accepting yet
                await probe(socket)
                return
        if time.monotonic() > deadline:
            raise BackendError(
                f"{kind.label} did not open its control socket {socket.name} within {timeout:g} s",
                code="E_VMM_START",
                hint=f"log: {log_file}",
            )
        await anyio.sleep(_READY_POLL_S)


@contextlib.asynccontextmanager
async def killed_on_failure(kind: VmmKind, handle: VmmProcess) -> AsyncIterator[None]:
    """Whatever fails or is cancelled in the body, the VMM does not outlive it."""
    try:
        yield
    except BaseException:
        with anyio.CancelScope(shield=True):
            await kill(kind, handle)
            remove_run_files(handle.plan.run_dir)
        raise


async def launch(
    kind: VmmKind,
    handle_type: type[H],
    plan: LaunchPlan,
    opts: SpawnOptions,
    probe: Probe,
    *,
    timeout: float,
) -> H:
    """``spawn`` + ``wait_ready``, killing the VMM if the wait fails or is cancelled."""
    handle = spawn(kind, handle_type, plan, opts)
    async with killed_on_failure(kind, handle):
        await wait_ready(kind, handle, probe, timeout=timeout, log_file=opts.output)
    if opts.write_pid:
        plan.pid_file.write_text(f"{handle.pid}\n")
    return handle


def log_started(kind: VmmKind, handle: VmmProcess, since: float, **fields: object) -> None:
    """The one ``<vmm>.started`` event: pid, the backend's own fields, ms since ``since``."""
    ms = round((time.monotonic() - since) * 1000, 1)
    log.info(f"{kind.event}.started", pid=handle.pid, **fields, ms=ms)


async def wait(handle: VmmProcess) -> int:
    """The exit status: the VMM's own for a child, UNKNOWN_STATUS for an adopted one."""
    while True:
        status = handle.status()
        if status is not None:
            return status
        # Woken by the kernel when the VMM exits (pidfd): an idle VM costs the engine
        # nothing. Polling every 20 ms cost ~5 ms of CPU per VM per second.
        # Our child's pid cannot be reused before we reap it: no start-time check.
        own_child = handle.proc is not None
        await wait_process_exit(handle.pid, None if own_child else handle.start_time)
        if handle.status() is None:
            await anyio.sleep(_POLL_S)  # exited but not yet reapable: rare, brief


async def kill(kind: VmmKind, handle: VmmProcess) -> int:
    """SIGKILL unless gone, then reap. Only ever signals the recorded process."""
    if handle.alive():
        if handle.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                handle.proc.kill()  # our child: the pid cannot be reused before we reap it
        else:
            kill_verified(handle.pid, handle.start_time, signal.SIGKILL)
        log.warning(f"{kind.event}.killed", pid=handle.pid)
    status: int | None = None
    with anyio.move_on_after(KILL_TIMEOUT_S):
        status = await wait(handle)
    if status is None:
        raise BackendError(f"{kind.label} pid {handle.pid} survived SIGKILL", code="E_VMM_STOP")
    return status


Graceful = Callable[[VmmProcess], Awaitable[None]]
"""The backend's polite request to exit (QMP quit, Ctrl-Alt-Del, power button)."""


async def stop(
    kind: VmmKind, handle: VmmProcess, graceful: Graceful | None, *, grace: float
) -> int:
    """Shielded: ``graceful`` (if the VMM is alive), up to ``grace`` s for it to exit,
    then SIGKILL; the run directory's sockets and pid file go either way."""
    with anyio.CancelScope(shield=True):
        if handle.alive() and graceful is not None:
            await graceful(handle)
            with anyio.move_on_after(grace):
                await wait(handle)
        status = await kill(kind, handle)
        remove_run_files(handle.plan.run_dir)
    log.info(f"{kind.event}.stopped", pid=handle.pid, status=status)
    return status


def terminate(handle: VmmProcess) -> bool:
    """SIGTERM, verified against the start time: the fallback when the API is gone."""
    return kill_verified(handle.pid, handle.start_time, signal.SIGTERM)


__all__ = [
    "Graceful",
    "Probe",
    "SpawnOptions",
    "VmmKind",
    "kill",
    "killed_on_failure",
    "launch",
    "log_started",
    "spawn",
    "stale_files",
    "stop",
    "terminate",
    "wait",
    "wait_ready",
]
