"""``python -m mvm.engine.shim READY_FD REQUEST_JSON``: the per-VM supervisor of a detached VM.

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

from mvm.engine.detached import request_from_json
from mvm.engine.engine import Engine
from mvm.engine.errors import MvmError
from mvm.engine.log import configure_logging


def _report(fd: int, verdict: dict[str, object]) -> None:
    os.write(fd, (json.dumps(verdict) + "\n").encode())
    os.close(fd)


async def _main(ready_fd: int, request_json: str) -> int:
    request = request_from_json(request_json)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with Engine.open() as engine, trio.open_nursery() as nursery:
            try:
                vm = await engine.start(request)
            except MvmError as exc:
                _report(
                    ready_fd,
                    {"ok": False, "code": exc.code, "message": exc.message, "hint": exc.hint},
                )
                return 1
            _report(ready_fd, {"ok": True, "boot_s": vm.boot_seconds, "vmm_pid": vm.pid})

            async def _on_signal() -> None:
                async for _sig in signals:
                    await vm.stop("stopped by signal")
                    return

            nursery.start_soon(_on_signal)
            code = await vm.wait()
            nursery.cancel_scope.cancel()
            return 0 if code in (None, 0) else 1
    return 0


def main() -> None:
    configure_logging(json=True, level=os.environ.get("MVM_LOG_LEVEL", "info"))
    ready_fd, request_json = int(sys.argv[1]), sys.argv[2]
    try:
        status = trio.run(_main, ready_fd, request_json)
    except MvmError as exc:
        with contextlib.suppress(OSError):
            _report(
                ready_fd, {"ok": False, "code": exc.code, "message": exc.message, "hint": exc.hint}
            )
        status = 1
    raise SystemExit(status)


if __name__ == "__main__":
    main()
