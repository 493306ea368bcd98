"""Detached VMs: a small supervisor process (the "shim") per VM.

A detached VM must outlive the command that started it, and so must its port
forwards and agent link, which live in host actors. So ``up`` spawns
``python -m mvm.engine.shim`` in its own session: the shim runs an ordinary
engine with the VM *attached* to it (same code path as ``run``) and records
itself as the VM's owner. ``down`` asks the shim to stop (SIGTERM -> the engine's
deterministic teardown); if the shim is gone (SIGKILLed, OOM), ``down`` stops the
VMM itself, verified by pid + start time, so a VM can always be removed.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from mvm.engine.base.errors import BackendError, MvmError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import CHILD_UMASK, ensure_private_dir, private_opener, vm_dir
from mvm.engine.base.process import is_same_process, kill_verified, wait_gone, wait_process_exit
from mvm.engine.base.runfiles import remove_run_dir
from mvm.engine.base.settings import child_environ
from mvm.engine.request.vmrequest import VmRequest
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm import network
from mvm.engine.vm.owner import Owner
from mvm.engine.vm.reconcile import FINAL_STATES, settle

if TYPE_CHECKING:
    import cattrs

    from mvm.engine.vm.warm_shim import WarmShim

log = get_logger("mvm.detached")


@functools.cache
def _conv() -> cattrs.Converter:
    """Built on first use: ``ls`` imports this module (adoption) and rarely needs it."""
    import cattrs

    return cattrs.Converter()


def request_to_json(request: VmRequest) -> str:
    return json.dumps(_conv().unstructure(request))


def request_from_json(text: str) -> VmRequest:
    return _conv().structure(json.loads(text), VmRequest)


async def start_detached(request: VmRequest, warm: WarmShim | None = None) -> dict[str, Any]:
    """Spawn the shim (or hand ``warm``, started earlier, its request) and wait for its
    verdict: ready (with boot time) or a coded error."""
    return await _spawn_shim(request.name, request_to_json(request), warm=warm)


async def start_detached_clone(request: VmRequest, snapshot: str) -> dict[str, Any]:
    """Spawn a shim that resumes ``snapshot`` as the clone ``request.name`` (name, ports
    and timeouts come from ``request``; the device model from the snapshot)."""
    return await _spawn_shim(request.name, "--clone", snapshot, request_to_json(request))


async def adopt_detached(name: str) -> dict[str, Any]:
    """Spawn a shim that takes over the running, unsupervised VM ``name``."""
    return await _spawn_shim(name, "--adopt", name)


async def _spawn_shim(name: str, *shim_args: str, warm: WarmShim | None = None) -> dict[str, Any]:
    """Start the shim and wait for its verdict line.

    Cancelled while waiting (Ctrl-C during ``up``), it asks the shim to stop, which
    cancels the boot and unwinds every step, and waits for it (shielded), so that
    "interrupted" is true: nothing of the half-made VM is left running. Only a shim
    that ignores SIGTERM for ``SHIM_STOP_S`` is killed, and the reconciler then settles
    what it left."""
    run_dir = vm_dir(name)
    made_run_dir = not run_dir.exists()
    ensure_private_dir(run_dir)
    if warm is not None:
        warm.send(shim_args, run_dir / "shim.log")
        proc, read_fd = warm.proc, warm.ready_read
    else:
        proc, read_fd = _cold_shim(run_dir, shim_args)
    try:
        line = await _read_line(read_fd)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await _stop_shim(proc)
        raise
    finally:
        os.close(read_fd)
    if not line:
        code = proc.wait()
        tail = _tail(run_dir / "shim.log")
        raise BackendError(
            f"the supervisor of {name} exited ({code}) before the VM was ready"
            + (f": {tail}" if tail else ""),
            code="E_SHIM_FAILED",
        )
    verdict: dict[str, Any] = json.loads(line)
    if not verdict.get("ok"):
        proc.wait()
        if made_run_dir and verdict.get("code") != "E_NAME_TAKEN":
            remove_run_dir(run_dir)  # e.g. E_PORT_IN_USE: nothing of this VM was made
        raise MvmError(
            verdict.get("message", "failed"), code=verdict.get("code"), hint=verdict.get("hint")
        )
    verdict["pid"] = proc.pid
    return verdict


def _cold_shim(run_dir: Path, shim_args: tuple[str, ...]) -> tuple[subprocess.Popen[bytes], int]:
    """Start a shim with its arguments on the command line; returns it and its verdict pipe."""
    read_fd, write_fd = os.pipe()
    try:
        with open(run_dir / "shim.log", "ab", opener=private_opener) as shim_log:
            # -P: without it ``-m`` puts the caller's cwd first on sys.path, and run from
            # a checkout of mvm, ./mvm (sources only) shadows the installed package.
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "mvm.engine.shim", str(write_fd), *shim_args],
                umask=CHILD_UMASK,
                stdin=subprocess.DEVNULL,
                stdout=shim_log,
                stderr=shim_log,
                pass_fds=(write_fd,),
                env=child_environ(),  # the shim reads its Settings from its environment
                start_new_session=True,
                close_fds=True,
            )
    finally:
        os.close(write_fd)
    return proc, read_fd


SHIM_STOP_S = 30.0


async def _stop_shim(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    with anyio.move_on_after(SHIM_STOP_S):
        await wait_process_exit(proc.pid)
    if proc.poll() is None:
        log.warning("shim.unresponsive", pid=proc.pid)
        proc.kill()
    await anyio.to_thread.run_sync(proc.wait)


async def _read_line(fd: int) -> str:
    """One line from the shim's verdict pipe, cancellable (a thread blocked in read
    is not: Ctrl-C would wait for the verdict)."""
    os.set_blocking(fd, False)
    chunks = b""
    while not chunks.endswith(b"\n"):
        await anyio.wait_readable(fd)
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            continue
        if not chunk:
            break
        chunks += chunk
    return chunks.decode().strip()


def _tail(path: os.PathLike[str], lines: int = 2) -> str:
    try:
        with open(path, errors="replace") as fh:
            kept = [ln.strip() for ln in fh.read().splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(kept[-lines:])


async def stop_vm_record(store: StateStore, rec: VmRecord, *, grace: float = 10.0) -> VmRecord:
    """Stop the VM (``stop_vm``) and forget it (``remove_vm``); returns its final row."""
    final = await stop_vm(store, rec, grace=grace)
    await remove_vm(store, final)
    return final


async def stop_vm(store: StateStore, rec: VmRecord, *, grace: float = 10.0) -> VmRecord:
    """``mvmctl down``: the one stop path, asked of the VM's owner.

    A live owner (a shim, or the engine of an attached run) is sent SIGTERM: it runs
    ``StopVm`` (guest sync + poweroff over its own agent link, VMM stop, the unwind)
    and records how the VM ended; a requested stop is never logged as a failure. An
    owner that is gone, or does not finish within the grace, is replaced by the
    reconciler's ``settle`` (kill the VMM, release, record). Returns the final row."""
    owner = Owner.parse(rec.owner)
    if owner is not None and owner.alive and not owner.is_me:
        kill_verified(owner.pid, owner.start_time, signal.SIGTERM)
        if not await wait_gone(owner.pid, owner.start_time, grace + 5):
            log.warning("down.owner_unresponsive", vm=rec.name, pid=owner.pid)
            kill_verified(owner.pid, owner.start_time, signal.SIGKILL)
            await wait_gone(owner.pid, owner.start_time, 3.0)
    fresh = await store.get_vm(rec.name) or rec
    if fresh.state not in FINAL_STATES:
        await _power_off_unowned(fresh, grace)
        fresh = await settle(store, fresh, reason="stopped") or fresh
    return fresh


async def _power_off_unowned(rec: VmRecord, grace: float) -> None:
    """Nobody owns the VM: ask its guest to sync and power off ourselves, then settle."""
    if not is_same_process(rec.pid, rec.pid_start_time):
        return
    from mvm.engine.vm.agent_access import open_vm_agent

    try:
        async with open_vm_agent(rec.name, timeout=3.0) as client:
            await client.shutdown(timeout=5.0)
    except MvmError as exc:
        log.info("down.no_guest_poweroff", vm=rec.name, code=exc.code)
        return
    assert rec.pid is not None
    await wait_gone(rec.pid, rec.pid_start_time, grace)


async def remove_vm(store: StateStore, rec: VmRecord) -> None:
    """Forget a finished VM: its run dir and its row."""
    for lease in network.leases_of(rec.name):
        await network.release(lease)
    remove_run_dir(rec.run_dir)
    await store.delete_vm(rec.name)
