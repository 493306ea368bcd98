"""``python -m mvm.engine.shim READY_FD (REQUEST_JSON | --adopt NAME | --clone SNAP REQ)``:
a detached VM's supervisor. (``--warm READY_FD REQUEST_FD``: the same, started before its
command knew the VM, reading those arguments from a pipe once its imports are done:
engine/vm/warm_shim.py.)

With ``--adopt`` it takes over a VM whose VMM already runs (after ``detach``, or
when the previous shim died): it first claims the row's owner field with a
compare-and-set, so two engines racing to adopt the same VM get one winner.

It reports one JSON line on READY_FD (``{"ok": true, ...}`` once the agent said
hello, or ``{"ok": false, "code": ..., "message": ...}``), then keeps the VM, its
forwards and agent link running until the VM exits or it receives SIGTERM, when
the engine tears everything down in order.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys

import trio

from mvm.engine.base.errors import ConflictError, MvmError, NotFoundError
from mvm.engine.base.log import configure_logging
from mvm.engine.base.settings import Settings, use_settings
from mvm.engine.engine import Engine, VmHandle
from mvm.engine.store import StateStore, VmRecord
from mvm.engine.vm.detached import request_from_json
from mvm.engine.vm.owner import engine_owner, owner_alive


def _report(fd: int, verdict: dict[str, object]) -> None:
    os.write(fd, (json.dumps(verdict) + "\n").encode())
    os.close(fd)


async def _claim(name: str) -> VmRecord:
    """Become the owner of an unsupervised VM, or fail with a coded error."""
    async with StateStore.open() as store:
        rec = await store.get_vm(name)
        if rec is None:
            raise NotFoundError(f"no VM named {name!r}", code="E_VM_NOT_FOUND")
        if owner_alive(rec.owner):
            raise ConflictError(f"VM {name!r} is already supervised", code="E_ALREADY_ADOPTED")
        if not await store.compare_and_set_owner(name, rec.owner, engine_owner()):
            raise ConflictError(f"another engine adopted {name!r} first", code="E_ALREADY_ADOPTED")
        claimed = await store.get_vm(name)
        assert claimed is not None
        return claimed


async def _main(ready_fd: int, args: list[str]) -> int:
    """Boot (or adopt, or clone) the VM, report, then run it until it ends or a signal.

    A signal during the boot cancels it (every step done so far is undone, and the
    verdict says so); after the boot it is the one stop path, ``vm.stop``."""
    adopt = await _claim(args[1]) if args[0] == "--adopt" else None
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with Engine.open(adopt_orphans=False) as engine, trio.open_nursery() as nursery:
            booting = trio.CancelScope()
            ready: list[VmHandle] = []

            async def _on_signal() -> None:
                async for _sig in signals:
                    if not ready:
                        booting.cancel()
                    else:
                        await ready[0].stop("stopped")
                    return

            nursery.start_soon(_on_signal)
            try:
                with booting:
                    ready.append(await _boot(engine, adopt, args))
            except MvmError as exc:
                nursery.cancel_scope.cancel()
                _report(ready_fd, _failed(exc.code, exc.message, exc.hint))
                return 1
            if not ready:  # the boot was cancelled by a signal, and undone
                nursery.cancel_scope.cancel()
                _report(ready_fd, _failed("E_CANCELLED", "stopped during boot", None))
                return 1
            vm = ready[0]
            _report(ready_fd, {"ok": True, "boot_s": vm.boot_seconds, "vmm_pid": vm.pid})
            code = await vm.wait()
            nursery.cancel_scope.cancel()
            return 0 if code in (None, 0) else 1
    return 0


def _failed(code: str | None, message: str, hint: str | None) -> dict[str, object]:
    return {"ok": False, "code": code, "message": message, "hint": hint}


async def _boot(engine: Engine, adopt: VmRecord | None, args: list[str]) -> VmHandle:
    if adopt is not None:
        return await engine.adopt(adopt)
    if args[0] == "--clone":
        req = request_from_json(args[2])
        return await engine.clone(
            args[1], req.name, ports=req.ports, mode="detached", boot_timeout_s=req.boot_timeout_s
        )
    return await engine.start(request_from_json(args[0]))


_BOOT_MODULES = ("mvm.engine.vm.boot", "mvm.backends.qemu.backend", "mvm.engine.admission")


def _warm_request(request_fd: int) -> list[str] | None:
    """A warm shim (engine/vm/warm_shim.py), imports done: wait for its arguments and the
    log to write to (appending what it wrote so far); None when its command went away."""
    import importlib

    for module in _BOOT_MODULES:  # what a boot imports lazily, while the command works
        importlib.import_module(module)
    with os.fdopen(request_fd, "r") as pipe:
        line = pipe.readline()
    if not line:
        return None
    message = json.loads(line)
    log_fd = os.open(message["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    return [str(a) for a in message["args"]]


def main() -> None:
    if sys.argv[1] == "--warm":
        ready_fd = int(sys.argv[2])
        warm_args = _warm_request(int(sys.argv[3]))
        if warm_args is None:
            raise SystemExit(0)
        args = warm_args
    else:
        ready_fd, args = int(sys.argv[1]), sys.argv[2:]
    try:
        # The shim is an edge: its parent passed its settings in the environment
        # (settings.child_environ in detached._spawn_shim).
        settings = Settings.from_env()
        configure_logging(json=True, level=settings.log_level or "info")
        with use_settings(settings):
            status = trio.run(_main, ready_fd, args)
    except MvmError as exc:
        with contextlib.suppress(OSError):
            _report(
                ready_fd, {"ok": False, "code": exc.code, "message": exc.message, "hint": exc.hint}
            )
        status = 1
    raise SystemExit(status)


if __name__ == "__main__":
    main()
