"""Faults of issue 15, each followed by the next mvmctl command and a leak count.

Every scenario ends with ``leaks()`` (tests/faults/leaks.py): VMMs, supervisors, sockets,
TAPs and leases, temp files and rows left live; the target is 0 for each. The table of
scenarios and leaks is printed at the end of the module (``-s``, or on failure) and kept
in the README.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvm import Image

from .leaks import MVMCTL, home, leaks, mvmctl

pytestmark = pytest.mark.qemu

RESULTS: dict[str, list[str]] = {}


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    yield
    lines = ["| fault | leaks after the next command |", "|---|---|"]
    lines += [f"| {name} | {', '.join(left) or '0'} |" for name, left in RESULTS.items()]
    print("\nfaults and leaks:\n" + "\n".join(lines))


def _record(name: str, left: list[str]) -> None:
    RESULTS[name] = left
    assert left == [], f"{name}: {left}"


def _row(name: str) -> dict[str, object] | None:
    rows = [r for r in json.loads(mvmctl("ls", "--json").stdout) if r["name"] == name]
    return dict(rows[0]) if rows else None


def _until(predicate: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def test_kill_9_of_qemu(demo_image: Image) -> None:
    assert mvmctl("up", "demo", "--name", "q9").returncode == 0
    row = _row("q9")
    assert row is not None
    os.kill(int(str(row["pid"])), signal.SIGKILL)
    _until(lambda: (r := _row("q9")) is not None and r["state"] == "exited")
    row = _row("q9")
    assert row is not None and row["exit_reason"] == "VMM killed by SIGKILL", row
    assert mvmctl("down", "q9").returncode == 0
    _record("kill -9 of QEMU (detached VM)", leaks())


def test_kill_9_of_the_guest_agent(demo_dev_image: Image) -> None:
    """/init restarts the agent; the host sees the new hello and the VM stays usable."""
    assert mvmctl("up", "demo-dev", "--name", "a9").returncode == 0
    killed = mvmctl("exec", "a9", "--", "sh", "-c", "kill -9 $(pidof mvm-agent)")
    assert killed.returncode != 0 or "Traceback" not in killed.stderr
    assert "Traceback" not in killed.stderr, killed.stderr
    deadline = time.monotonic() + 60
    while True:  # the restarted agent answers again
        again = mvmctl("exec", "a9", "--", "echo", "back")
        if again.returncode == 0 and again.stdout.strip() == "back":
            break
        assert time.monotonic() < deadline, again.stderr
        time.sleep(0.5)
    assert mvmctl("down", "a9").returncode == 0
    _record("kill -9 of the guest agent (exec in flight)", leaks())


def test_kill_9_of_the_supervisor_after_ready(demo_image: Image) -> None:
    assert mvmctl("up", "demo", "--name", "s9").returncode == 0
    row = _row("s9")
    assert row is not None
    os.kill(int(str(row["supervisor_pid"])), signal.SIGKILL)
    _until(lambda: _gone(int(str(row["supervisor_pid"]))))
    readopted = _row("s9")  # the next command adopts it: a new supervisor
    assert readopted is not None and readopted["state"] == "running", readopted
    assert readopted["supervisor_pid"] != row["supervisor_pid"]
    assert mvmctl("down", "s9").returncode == 0
    _record("kill -9 of the supervisor (shim) after ready", leaks())


@pytest.mark.parametrize("moment", ["booting", "ready"])
def test_kill_9_of_the_cli_of_an_attached_run(demo_image: Image, moment: str) -> None:
    proc = subprocess.Popen(
        [*MVMCTL, "run", "--attached", "demo", "--name", f"c9{moment[0]}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    if moment == "ready":
        line = proc.stderr.readline()
        assert "ready" in line, line
    else:
        _until(lambda: (home() / "vms" / f"c9{moment[0]}").is_dir())
    proc.kill()
    proc.wait()
    _record(f"kill -9 of the CLI of an attached run ({moment})", leaks())


def test_unwritable_home(demo_image: Image) -> None:
    ro = home() / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    env = {**os.environ, "MVM_HOME": str(ro / "home")}
    try:
        up = mvmctl("up", "demo", "--name", "rw", env=env)
    finally:
        ro.chmod(stat.S_IRWXU)
    # root ignores mode bits: make the home a file instead if the first try succeeded
    if up.returncode == 0:
        mvmctl("down", "rw", env=env)
        blocker = home() / "afile"
        blocker.write_text("not a directory\n")
        env["MVM_HOME"] = str(blocker / "home")
        up = mvmctl("up", "demo", "--name", "rw", env=env)
    assert up.returncode != 0
    lines = up.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error[E_"), up.stderr
    _record("unwritable MVM_HOME", leaks())


def test_disk_full_home(demo_image: Image) -> None:
    full = home() / "full"
    full.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tiny tmpfs here: {mounted.stderr!r}")
    try:
        (full / "filler").write_bytes(b"\0" * 60 * 1024)
        env = {**os.environ, "MVM_HOME": str(full)}
        up = mvmctl("up", "demo", "--name", "df", env=env)
        assert up.returncode != 0
        lines = up.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error[E_"), up.stderr
        assert "Traceback" not in up.stderr
        os.environ["MVM_HOME"], saved = str(full), os.environ["MVM_HOME"]
        try:
            left = leaks(rows=False)
        finally:
            os.environ["MVM_HOME"] = saved
    finally:
        subprocess.run(["umount", str(full)], check=False)
    _record("disk full under MVM_HOME", left)


def test_corrupted_and_newer_database() -> None:
    assert mvmctl("ls").returncode == 0  # creates the database
    db = home() / "state.db"
    conn = sqlite3.connect(db)
    with conn:  # a schema version from the future, as a newer mvm would record it
        conn.execute("INSERT INTO schema_version VALUES (999, 0, 'from the future')")
    conn.close()
    newer = mvmctl("ls")
    assert newer.returncode != 0 and newer.stderr.startswith("error[E_DB_NEWER]"), newer.stderr
    db.write_bytes(b"this is not sqlite" * 100)
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    corrupt = mvmctl("ls")
    assert corrupt.returncode != 0 and corrupt.stderr.startswith("error[E_DB_CORRUPT]"), (
        corrupt.stderr
    )
    assert len(corrupt.stderr.strip().splitlines()) == 1
    _record("corrupted / newer-schema database", leaks(rows=False))


def test_concurrent_up_and_down_of_one_name(demo_image: Image) -> None:
    results: list[subprocess.CompletedProcess[str]] = []

    def up() -> None:
        results.append(mvmctl("up", "demo", "--name", "race"))

    threads = [threading.Thread(target=up) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r.returncode == 0]
    refused = [r for r in results if r.returncode != 0]
    assert len(ok) == 1, [r.stderr for r in results]
    assert all(r.stderr.startswith("error[E_NAME_TAKEN]") for r in refused), [
        r.stderr for r in refused
    ]
    downs: list[subprocess.CompletedProcess[str]] = []
    threads = [threading.Thread(target=lambda: downs.append(mvmctl("down", "race")))]
    threads.append(threading.Thread(target=lambda: downs.append(mvmctl("down", "race"))))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert any(d.returncode == 0 for d in downs), [d.stderr for d in downs]
    for d in downs:
        assert d.returncode == 0 or d.stderr.startswith("error[E_VM_NOT_FOUND]"), d.stderr
    _record("concurrent up x3 / down x2 of one name", leaks())
