"""``run --attached``: the guest app's own output, live, on this command's stdout/stderr.

Where it comes from:
* A command entrypoint writes to the guest console, which the VMM appends to
  ``console.log`` on the host. /init tags its stderr lines ``mvm-err: `` and ends with
  ``mvm-exit: N``; kernel (``[  1.23] ...``), ``mvm-init:`` and ``mvm-agent:`` lines are
  not the app's. Reading the host file (not the agent) means nothing is lost when the
  command finishes before the agent's hello, and the guest never waits for us: the
  VMM writes the file at its own pace, a slow stdout only makes us read it later.
* Services log to files in the guest that the agent's ``logs`` follow streams
  (``[service] line`` on stdout, as ``mvmctl logs`` prints them). Those arrive over
  the agent link, so they go through a bounded queue: when our stdout cannot keep up,
  lines are dropped and a ``[mvm] N service log lines dropped`` marker says so.

Writes go through a worker thread so a blocked pipe never blocks the event loop
(Ctrl-C still tears the VM down).
"""

from __future__ import annotations

import os
import re
from contextlib import suppress
from pathlib import Path

import anyio

from mvm.backends.guest.client import AgentClient
from mvm.engine.base.errors import MvmError
from mvm.engine.base.log import get_logger

log = get_logger("mvm.cli")

START_MARK = b"mvm-init: entrypoint command as uid "
ERR_PREFIX = b"mvm-err: "
EXIT_LINE = re.compile(rb"^mvm-exit: -?\d+$")
_NOT_APP = re.compile(rb"^(\[\s*\d+\.\d+\] |mvm-init: |mvm-agent: )")
SERVICE_QUEUE = 1000
_CHUNK = 65536


def classify(line: bytes) -> tuple[int, bytes] | None:
    """One console line (without its newline) -> (fd, bytes to write) or None when it
    is not the app's output. fd 0 means the entrypoint's exit line: the end."""
    line = line.rstrip(b"\r")
    if EXIT_LINE.match(line):
        return (0, b"")
    if line.startswith(ERR_PREFIX):
        return (2, line[len(ERR_PREFIX) :] + b"\n")
    if _NOT_APP.match(line):
        return None
    return (1, line + b"\n")


class ConsoleApp:
    """Splits the console log's new bytes into the entrypoint's stdout and stderr."""

    def __init__(self) -> None:
        self.started = False  # the entrypoint marker was seen
        self.ended = False  # its exit line was seen
        self._partial = b""

    def feed(self, data: bytes, *, final: bool = False) -> list[tuple[int, bytes]]:
        """Complete lines only, unless ``final`` (the VM is gone: flush the rest)."""
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = b"" if final else lines.pop()
        out: list[tuple[int, bytes]] = []
        for line in lines:
            if self.ended or (final and not line):
                continue
            if not self.started:
                self.started = line.rstrip(b"\r").startswith(START_MARK)
                continue
            item = classify(line)
            if item is None:
                continue
            if item[0] == 0:
                self.ended = True
                continue
            if out and out[-1][0] == item[0]:  # one write per run of lines
                out[-1] = (item[0], out[-1][1] + item[1])
            else:
                out.append(item)
        return out


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            return
        view = view[n:]


async def write_out(fd: int, data: bytes) -> None:
    """os.write in a worker thread: a full pipe stalls only this writer."""
    if data:
        await anyio.to_thread.run_sync(_write_all, fd, data, abandon_on_cancel=True)


def console_offset(path: Path) -> int:
    """Where this boot's console output will start (a re-used name keeps an old log)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


async def pump_console(path: Path, offset: int, done: anyio.Event, poll_s: float = 0.05) -> None:
    """Stream the entrypoint's output from ``path`` (from ``offset``) until ``done`` is
    set and the file holds nothing more (or the exit line was seen)."""
    app = ConsoleApp()
    while True:
        finished = done.is_set()  # read it before the file: the last bytes precede it
        data = b""
        with suppress(OSError):
            size = path.stat().st_size
            if size < offset:  # the file was recreated
                offset = 0
            with path.open("rb") as f:
                f.seek(offset)
                data = f.read(_CHUNK)
        offset += len(data)
        final = finished and len(data) < _CHUNK
        for fd, chunk in app.feed(data, final=final):
            await write_out(fd, chunk)
        if final or app.ended:
            return
        if len(data) < _CHUNK:
            await anyio.sleep(poll_s)


async def pump_services(client: AgentClient, queue_size: int = SERVICE_QUEUE) -> None:
    """Follow every service's log (``[svc] line``) until the link ends; bounded."""
    send, recv = anyio.create_memory_object_stream[bytes](queue_size)
    dropped = 0

    async def writer() -> None:
        nonlocal dropped
        async for line in recv:
            if dropped:
                n, dropped = dropped, 0
                await write_out(2, f"[mvm] {n} service log lines dropped\n".encode())
            await write_out(1, line)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        try:
            async with client.follow_logs(follow=True) as lines:
                async for entry in lines:
                    try:
                        send.send_nowait(
                            f"[{entry.service}] {entry.line}\n".encode(errors="replace")
                        )
                    except anyio.WouldBlock:
                        dropped += 1
        except* MvmError as group:  # the link dies with the VM
            codes = [e.code for e in group.exceptions if isinstance(e, MvmError)]
            log.debug("run.service_logs_ended", codes=codes)
        finally:
            send.close()
