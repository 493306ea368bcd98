"""`mvmctl logs` (issue 16): the app's output by default, without the kernel's dmesg and
/init's lines, so a one-shot command's stdout comes first; --all is the raw console;
--tail / --since / --timestamps / --service select from it. Pure functions on a
recorded console log, then the command itself on a store row and that log."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from helpers.records import vm_row

from mvm.cli.log_view import LogLine, console_view, format_ts, select
from mvm.cli.since import parse_since
from mvm.engine.base.errors import ConfigError
from mvm.engine.store import StateStore, VmRecord

# A command entrypoint's boot as QEMU records it (abridged dmesg), then a second boot.
RECORDED = b"""[    0.000000] Linux version 6.1.192 (mvm@mvm) #1 SMP 1970-01-01
[    0.000000] Command line: console=ttyS0 reboot=t panic=-1 init=/init root=/dev/vda ro
[    0.312345] virtio_blk virtio1: [vda] 65536 512-byte logical blocks
mvm-init: filesystems mounted
mvm-init: image hello kind=command uid=1000 sealed=0 host=hello
mvm-init: ready uptime=1.15
mvm-init: agent started pid=76 (--serial /dev/vport1p1)
mvm-agent: mvm-agent/0.1 ready (pid 76)
mvm-init: entrypoint command as uid 1000
hello from the guest
mvm-err: a warning on stderr
[    1.900000] random: crng init done
second line
mvm-exit: 0
mvm-init: poweroff
[    2.000000] reboot: Power down
[    0.000000] Linux version 6.1.192 (mvm@mvm) #1 SMP 1970-01-01
mvm-init: ready uptime=1.00
mvm-init: entrypoint command as uid 1000
second boot says hi\r
mvm-exit: 3
[    1.500000] reboot: Power down
"""


def test_the_app_view_is_the_entrypoints_output_of_every_boot() -> None:
    lines = console_view(RECORDED, app_only=True, started_at=None)
    assert [(ln.fd, ln.text) for ln in lines] == [
        (1, "hello from the guest"),
        (2, "a warning on stderr"),
        (1, "second line"),
        (1, "second boot says hi"),
    ]
    assert all(ln.source == "app" for ln in lines)


def test_the_raw_view_is_every_console_line() -> None:
    lines = console_view(RECORDED, app_only=False, started_at=None)
    assert len(lines) == RECORDED.count(b"\n")
    assert lines[0].text.startswith("[    0.000000] Linux version")
    assert "mvm-err: a warning on stderr" in [ln.text for ln in lines]


def test_only_the_last_boot_is_on_the_wall_clock() -> None:
    started_at = 1_800_000_000.0  # the agent's hello of the last boot, ~ its ready line
    lines = console_view(RECORDED, app_only=True, started_at=started_at)
    assert [ln.ts for ln in lines[:3]] == [None, None, None]  # the first boot: unknown
    assert lines[3].ts == pytest.approx(started_at)  # uptime 1.00, ready at 1.00
    raw = console_view(RECORDED, app_only=False, started_at=started_at)
    assert raw[-1].ts == pytest.approx(started_at + 0.5)  # power down at 1.50
    assert raw[-1].text.endswith("reboot: Power down")


def test_tail_and_since_select_from_the_view() -> None:
    lines = [LogLine("app", f"l{i}", ts=100.0 + i) for i in range(10)]
    lines.append(LogLine("web", "no time"))
    assert [ln.text for ln in select(lines, tail=2)] == ["l9", "no time"]
    assert select(lines, tail=0) == []
    assert [ln.text for ln in select(lines, since=107.0)] == ["l7", "l8", "l9"]
    assert [ln.text for ln in select(lines, since=105.0, tail=1)] == ["l9"]


def test_since_reads_durations_times_and_unix_seconds() -> None:
    now = 1_800_000_000.0
    assert parse_since("30s", now, code="E_LOGS_SINCE") == now - 30
    assert parse_since("5m", now, code="E_LOGS_SINCE") == now - 300
    assert parse_since("2h", now, code="E_LOGS_SINCE") == now - 7200
    assert parse_since("1.5d", now, code="E_LOGS_SINCE") == now - 1.5 * 86400
    assert parse_since("1700000000", now, code="E_LOGS_SINCE") == 1_700_000_000.0
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert parse_since("2026-01-02T03:04:05Z", now, code="E_LOGS_SINCE") == when
    assert parse_since("2026-01-02T03:04:05", now, code="E_LOGS_SINCE") == when  # no zone: UTC
    with pytest.raises(ConfigError) as info:
        parse_since("yesterday", now, code="E_LOGS_SINCE")
    assert info.value.code == "E_LOGS_SINCE"


def test_render_names_services_and_prefixes_times() -> None:
    assert LogLine("web", "GET /").render(timestamps=False) == "[web] GET /"
    assert LogLine("app", "hi").render(timestamps=False) == "hi"
    ts = datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC).timestamp()
    assert LogLine("app", "hi", ts=ts).render(timestamps=True) == "2026-01-02T03:04:05.250Z hi"
    assert format_ts(None).strip() == "-" and len(format_ts(None)) == len(format_ts(ts))


# -- the command, on a store row and a recorded log ------------------------------------------


def _mvmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _row(name: str, home: Path, started_at: float) -> VmRecord:
    return vm_row(
        name,
        home,
        created_at=started_at - 2,
        started_at=started_at,
        exited_at=started_at + 1,
        exit_code=3,
    )


async def _recorded_vm(home: Path, name: str, started_at: float) -> None:
    async with StateStore.open(home / "state.db") as store:
        await store.insert_vm(_row(name, home, started_at))
    (home / "vms" / name).mkdir(parents=True, exist_ok=True)
    (home / "vms" / name / "console.log").write_bytes(RECORDED)


async def test_logs_prints_the_app_output_first(mvm_home: Path) -> None:
    await _recorded_vm(mvm_home, "oneshot", time.time() - 60)
    out = _mvmctl("logs", "oneshot")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["hello from the guest", "second line", "second boot says hi"]
    assert out.stderr.splitlines() == ["a warning on stderr"]
    raw = _mvmctl("logs", "oneshot", "--all")
    assert raw.stdout.splitlines()[0].startswith("[    0.000000] Linux version")
    assert "mvm-init: entrypoint command as uid 1000" in raw.stdout
    assert _mvmctl("logs", "oneshot", "--console").stdout == raw.stdout
    tail = _mvmctl("logs", "oneshot", "--tail", "1")
    assert tail.stdout == "second boot says hi\n" and tail.stderr == ""


async def test_logs_since_and_timestamps(mvm_home: Path) -> None:
    started_at = time.time() - 3600  # the last boot was ready an hour ago
    await _recorded_vm(mvm_home, "stamped", started_at)
    recent = _mvmctl("logs", "stamped", "--since", "10m")
    assert recent.returncode == 0 and recent.stdout == "", recent
    hour = _mvmctl("logs", "stamped", "--since", "2h", "--timestamps")
    (line,) = hour.stdout.splitlines()  # only the last boot has times
    assert line == format_ts(started_at) + " second boot says hi"
    bad = _mvmctl("logs", "stamped", "--since", "soon")
    assert bad.returncode != 0 and bad.stderr.startswith("error[E_LOGS_SINCE]"), bad.stderr
    neg = _mvmctl("logs", "stamped", "--tail", "-1")
    assert neg.returncode == 2 and "whole number" in neg.stderr


async def test_logs_service_of_a_stopped_vm_says_where_they_live(mvm_home: Path) -> None:
    await _recorded_vm(mvm_home, "svc", time.time())
    out = _mvmctl("logs", "svc", "--service", "web")
    assert out.returncode == 0 and out.stdout == "", out
    assert "not running" in out.stderr and "live in the guest" in out.stderr
    assert _mvmctl("logs", "nosuchvm").stderr.startswith("error[E_VM_NOT_FOUND]")


async def test_wait_json(mvm_home: Path) -> None:
    await _recorded_vm(mvm_home, "waited", time.time())
    out = _mvmctl("wait", "waited", "--json")
    assert json.loads(out.stdout) == {"name": "waited", "exit_code": 3}
    assert out.returncode == 1
    assert _mvmctl("wait", "waited").stdout == "3\n"


@pytest.mark.parametrize("chunk", [1, 7, 64])
def test_feeding_in_chunks_as_follow_does_gives_the_same_lines(chunk: int) -> None:
    """`logs -f` feeds the filter whatever the file grew by: a line split across reads
    is held until its newline, so the followed view equals the one-shot view."""
    from mvm.cli.log_view import ConsoleFilter

    for app_only in (True, False):
        view = ConsoleFilter(app_only=app_only)
        got: list[LogLine] = []
        for i in range(0, len(RECORDED), chunk):
            view.feed(RECORDED[i : i + chunk])
            got += view.take(None)
        view.feed(b"", final=True)
        got += view.take(None)
        assert got == console_view(RECORDED, app_only=app_only, started_at=None)


def test_a_running_stub_vm_logs_health_json_and_a_bad_service(mvm_home: Path) -> None:
    """The stub backend runs the real guest agent as a host process: `logs` reaches its
    `logs` request (a --service the image lacks is E_LOGS_SERVICE, one line, naming the
    image's services), and `health --json` is the agent's report as JSON."""
    up = _mvmctl("up", "--backend", "stub", "--name", "stubby")
    assert up.returncode == 0, up.stderr
    try:
        raw = _mvmctl("logs", "stubby", "--all")
        assert raw.returncode == 0 and "mvm-agent:" in raw.stdout, raw
        app = _mvmctl("logs", "stubby")
        assert app.returncode == 0 and app.stdout == "", app  # no entrypoint, no services
        assert app.stderr.splitlines() == [
            "stubby: no app output yet (the raw console: mvmctl logs stubby --all)"
        ]
        for service in ("../etc", "nope"):
            bad = _mvmctl("logs", "stubby", "--service", service)
            assert bad.returncode == 2, bad.stderr
            assert bad.stderr.startswith("error[E_LOGS_SERVICE]: stubby has no service"), bad
            assert "(its services: web)" in bad.stderr and len(bad.stderr.splitlines()) == 1
        health = _mvmctl("health", "stubby", "--json")
        assert health.returncode == 0, health.stderr
        assert json.loads(health.stdout) == {"name": "stubby", "services": {}}
    finally:
        assert _mvmctl("down", "stubby").returncode == 0


def test_a_reader_that_goes_away_is_not_a_traceback(mvm_home: Path) -> None:
    """`mvmctl inspect NAME | head`: the pipe's reader is gone before the command writes;
    the command exits 141 (as if killed by SIGPIPE) with nothing on stderr."""
    up = _mvmctl("up", "--backend", "stub", "--name", "piped")
    assert up.returncode == 0, up.stderr
    try:
        read_end, write_end = os.pipe()
        os.close(read_end)  # the reader left before the first byte
        proc = subprocess.run(
            [sys.executable, "-m", "mvm.cli", "inspect", "piped"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
        os.close(write_end)
        assert proc.returncode == 141, proc.stderr
        assert proc.stderr == "", proc.stderr
    finally:
        assert _mvmctl("down", "piped").returncode == 0
