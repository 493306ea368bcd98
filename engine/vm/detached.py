"""Detached VMs: a small supervisor process (the "shim") per VM.

A detached VM must outlive the command that started it, and so must its port
forwards and agent link, which live in host actors. So ``up`` spawns
``python -m mvm.engine.vm.shim`` in its own session: the shim runs an ordinary
engine with the VM *attached* to it (same code path as ``run``) and records
itself as the VM's owner. ``down`` asks the shim to stop (SIGTERM -> the engine's
deterministic teardown); if the shim is gone (SIGKILLed, OOM), ``down`` stops the
VMM itself, verified by pid + start time, so a VM can always be removed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import anyio
import cattrs
import structlog

from mvm.engine.base.errors import BackendError, MvmError
from mvm.engine.base.paths import CHILD_UMASK, ensure_private_dir, private_opener, vm_dir
from mvm.engine.base.process import is_same_process, kill_verified
from mvm.engine.base.runfiles import remove_run_dir
from mvm.engine.request.vmrequest import VmRequest
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm import network
from mvm.engine.vm.reconcile import owner_alive

log = structlog.get_logger("mvm.detached")

_conv = cattrs.Converter()


def request_to_json(request: VmRequest) -> str:
    return json.dumps(_conv.unstructure(request))


def request_from_json(text: str) -> VmRequest:
    return _conv.structure(json.loads(text), VmRequest)


async def start_detached(request: VmRequest) -> dict[str, Any]:
    """Spawn the shim and wait for its verdict: ready (with boot time) or a coded error."""
    return await _spawn_shim(request.name, request_to_json(request))


async def start_detached_clone(request: VmRequest, snapshot: str) -> dict[str, Any]:
    """Spawn a shim that resumes ``snapshot`` as the clone ``request.name`` (name, ports
    and timeouts come from ``request``; the device model from the snapshot)."""
    return await _spawn_shim(request.name, "--clone", snapshot, request_to_json(request))


async def adopt_detached(name: str) -> dict[str, Any]:
    """Spawn a shim that takes over the running, unsupervised VM ``name``."""
    return await _spawn_shim(name, "--adopt", name)


async def _spawn_shim(name: str, *shim_args: str) -> dict[str, Any]:
    run_dir = vm_dir(name)
    ensure_private_dir(run_dir)
    read_fd, write_fd = os.pipe()
    try:
        with open(run_dir / "shim.log", "ab", opener=private_opener) as shim_log:
            # -P: without it ``-m`` puts the caller's cwd first on sys.path, and run from
            # a checkout of mvm, ./mvm (sources only) shadows the installed package.
            proc = subprocess.Popen(
                [sys.executable, "-P", "-m", "mvm.engine.vm.shim", str(write_fd), *shim_args],
                umask=CHILD_UMASK,
                stdin=subprocess.DEVNULL,
                stdout=shim_log,
                stderr=shim_log,
                pass_fds=(write_fd,),
                start_new_session=True,
                close_fds=True,
            )
    finally:
        os.close(write_fd)
    try:
        line = await anyio.to_thread.run_sync(_read_line, read_fd)
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
        raise MvmError(
            verdict.get("message", "failed"), code=verdict.get("code"), hint=verdict.get("hint")
        )
    verdict["pid"] = proc.pid
    return verdict


def _read_line(fd: int) -> str:
    chunks = b""
    while not chunks.endswith(b"\n"):
        chunk = os.read(fd, 4096)
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


async def _wait_gone(pid: int, start_time: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_same_process(pid, start_time):
            return True
        await anyio.sleep(0.05)
    return not is_same_process(pid, start_time)


async def stop_vm_record(store: StateStore, rec: VmRecord, *, grace: float = 10.0) -> None:
    """Stop whatever runs for rec (shim first, VMM as a fallback) and delete its state."""
    if owner_alive(rec.owner) and rec.owner and int(rec.owner.split(":")[0]) != os.getpid():
        pid, start = (int(x) for x in rec.owner.split(":", 1))
        kill_verified(pid, start, signal.SIGTERM)
        if not await _wait_gone(pid, start, grace + 5):
            log.warning("down.shim_unresponsive", vm=rec.name, pid=pid)
            kill_verified(pid, start, signal.SIGKILL)
    fresh = await store.get_vm(rec.name) or rec
    if is_same_process(fresh.pid, fresh.pid_start_time):
        assert fresh.pid is not None
        kill_verified(fresh.pid, fresh.pid_start_time, signal.SIGTERM)
        if not await _wait_gone(fresh.pid, fresh.pid_start_time, 3.0):
            kill_verified(fresh.pid, fresh.pid_start_time, signal.SIGKILL)
            await _wait_gone(fresh.pid, fresh.pid_start_time, 3.0)
    for lease in network.leases_of(rec.name):
        await network.release(lease)
    remove_run_dir(rec.run_dir)
    await store.delete_vm(rec.name)
