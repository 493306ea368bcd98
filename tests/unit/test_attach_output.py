"""run --attached's output split: console log lines -> the app's stdout/stderr only,
and the bounded service-log queue that drops (with a marker) instead of stalling."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from mvm.backends.guest.client import LogLine
from mvm.cli import attach_output
from mvm.cli.attach_output import ConsoleApp, classify, pump_console, pump_services

BOOT = (
    b"[    0.000000] Linux version 6.1\r\n"
    b"mvm-init: filesystems mounted\r\n"
    b"early line that is not the app's\r\n"
    b"mvm-init: entrypoint command as uid 1000\r\n"
    b"mvm-agent: mvm-agent/0.1 ready (pid 73, sealed)\r\n"
)


def test_classify_sorts_console_lines() -> None:
    assert classify(b"hello\r") == (1, b"hello\n")
    assert classify(b"mvm-err: oops") == (2, b"oops\n")
    assert classify(b"mvm-exit: 7") == (0, b"")
    assert classify(b"[    1.270833] clocksource: Switched to clocksource tsc") is None
    assert classify(b"mvm-init: poweroff") is None
    assert classify(b"mvm-agent: serving on /dev/vport1p1") is None
    assert classify(b"[not a kernel line]") == (1, b"[not a kernel line]\n")


def test_only_lines_after_the_entrypoint_marker_and_before_exit() -> None:
    app = ConsoleApp()
    out = app.feed(BOOT + b"to-stdout\r\nsecond\r\nmvm-err: to-stderr\r\nmvm-exit: 7\r\nafter\r\n")
    assert out == [(1, b"to-stdout\nsecond\n"), (2, b"to-stderr\n")]
    assert app.started and app.ended


def test_partial_lines_wait_for_their_newline_unless_final() -> None:
    app = ConsoleApp()
    assert app.feed(BOOT + b"hal") == []
    assert app.feed(b"f\r\nno newline") == [(1, b"half\n")]
    assert app.feed(b"", final=True) == [(1, b"no newline\n")]


def test_no_marker_no_output() -> None:
    """Services/shell kinds: nothing of the console is the app's stdout."""
    app = ConsoleApp()
    assert app.feed(b"mvm-init: services started: web\r\nhttpd noise\r\n", final=True) == []


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bytes]]:
    got: list[tuple[int, bytes]] = []
    monkeypatch.setattr(attach_output, "_write_all", lambda fd, data: got.append((fd, data)))
    return got


def test_pump_console_from_offset_until_exit(
    tmp_path: Path, captured: list[tuple[int, bytes]]
) -> None:
    log = tmp_path / "console.log"
    old = BOOT + b"old run\r\nmvm-exit: 0\r\n"
    log.write_bytes(old)

    async def main() -> None:
        done = anyio.Event()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump_console, log, len(old), done, 0.01)
                with log.open("ab") as f:
                    f.write(BOOT + b"new run\r\n")
                    f.flush()
                    f.write(b"mvm-err: bad\r\nmvm-exit: 3\r\n")
                # the exit line ends the pump without `done`

    anyio.run(main, backend="trio")
    assert captured == [(1, b"new run\n"), (2, b"bad\n")]


def test_pump_console_drains_after_done(tmp_path: Path, captured: list[tuple[int, bytes]]) -> None:
    """A VM killed before its exit line: what the file holds is still printed."""
    log = tmp_path / "console.log"
    log.write_bytes(BOOT + b"x" * 70000 + b"\r\nlast")
    done = anyio.Event()
    done.set()
    anyio.run(pump_console, log, 0, done, 0.01, backend="trio")
    assert b"".join(d for _, d in captured) == b"x" * 70000 + b"\nlast\n"


class _Client:
    def __init__(self, n: int) -> None:
        self.n = n

    @asynccontextmanager
    async def follow_logs(self, *, follow: bool) -> AsyncIterator[AsyncIterator[LogLine]]:
        async def lines() -> AsyncIterator[LogLine]:
            for i in range(self.n):
                yield LogLine("web", f"l{i}")

        yield lines()


def test_pump_services_drops_with_a_marker_when_stdout_is_slow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    got: list[tuple[int, bytes]] = []
    gate = anyio.Event()

    async def slow_write(fd: int, data: bytes) -> None:
        await gate.wait()  # stdout blocked until every line arrived
        got.append((fd, data))

    monkeypatch.setattr(attach_output, "write_out", slow_write)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pump_services, _Client(50), 5)  # type: ignore[arg-type]
            await anyio.sleep(0.2)
            gate.set()

    anyio.run(main, backend="trio")
    lines = [d for fd, d in got if fd == 1]
    marker = [d for fd, d in got if fd == 2]
    assert lines[0] == b"[web] l0\n" and 1 < len(lines) < 50
    assert marker and marker[0].endswith(b"service log lines dropped\n")
    assert int(marker[0].split()[1]) == 50 - len(lines)


def test_write_out_survives_a_closed_pipe() -> None:
    r, w = os.pipe()
    os.close(r)
    attach_output._write_all(w, b"nobody reads this")  # no exception
    os.close(w)
