"""Docker-grade lifecycle verbs on real QEMU: stop keeps the row and logs, start boots
it again from the row (a data volume keeps its files), restart gives a new VMM, rm
refuses a running VM unless -f, kill ends it hard, and ``run --attached`` exits with
the guest's status."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from mvm import Image

from .conftest import qemu_pids
from .test_cli import MVMCTL, mvmctl

pytestmark = pytest.mark.qemu


def _ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def _row(name: str) -> dict[str, object]:
    rows = json.loads(_ok(mvmctl("inspect", name)).stdout)
    assert isinstance(rows, list) and len(rows) == 1
    row = rows[0]
    assert isinstance(row, dict) and row["name"] == name
    return row


def _alive(pid: object) -> bool:
    assert isinstance(pid, int)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_stop_keeps_row_and_logs_then_start_keeps_the_data_volume(
    demo_dev_image: Image, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    (data / "shared").mkdir(parents=True)
    (data / "shared").chmod(0o777)  # exec runs as the agent's uid
    image = str(demo_dev_image.directory)
    _ok(mvmctl("up", image, "--name", "vb1", "-v", f"{data}:/mnt/data:32"))
    try:
        _ok(mvmctl("exec", "vb1", "--", "sh", "-c", "echo kept-$((6*7)) > /mnt/data/shared/f"))
        first = _row("vb1")
        assert first["state"] == "running"

        stopped = _ok(mvmctl("stop", "vb1"))
        assert "vb1: stopped" in stopped.stderr
        row = _row("vb1")  # the row is kept: ls/inspect show it exited
        assert row["state"] == "exited" and row["pid"] is None, row
        assert not _alive(first["pid"])
        ls = json.loads(_ok(mvmctl("ls", "--json")).stdout)
        assert [r["state"] for r in ls if r["name"] == "vb1"] == ["exited"]
        assert "Linux version" in _ok(mvmctl("logs", "vb1", "--all")).stdout  # logs still work
        again = mvmctl("stop", "vb1")  # stopping a stopped VM is not an error
        assert again.returncode == 0 and "already exited" in again.stderr

        _ok(mvmctl("start", "vb1"))
        row = _row("vb1")
        assert row["state"] == "running" and row["pid"] != first["pid"]
        assert row["spec"] == first["spec"]  # booted again as recorded
        assert row["spec"]["volumes"] == [f"{data}:/mnt/data:32"]  # type: ignore[index]
        kept = _ok(mvmctl("exec", "vb1", "--", "cat", "/mnt/data/shared/f"))
        assert kept.stdout == "kept-42\n"

        before = _row("vb1")["pid"]
        _ok(mvmctl("restart", "vb1"))
        after = _row("vb1")
        assert after["state"] == "running" and after["pid"] != before
        assert not _alive(before)
    finally:
        mvmctl("rm", "-f", "vb1")
    gone = mvmctl("inspect", "vb1")
    assert gone.returncode != 0 and gone.stderr.startswith("error[E_VM_NOT_FOUND]")


def test_rm_refuses_a_running_vm_and_rm_f_leaves_no_process(demo_image: Image) -> None:
    before = qemu_pids()
    _ok(mvmctl("up", str(demo_image.directory), "--name", "vb2"))
    try:
        pid = _row("vb2")["pid"]
        refused = mvmctl("rm", "vb2")
        assert refused.returncode != 0
        assert refused.stderr.startswith("error[E_VM_RUNNING]"), refused.stderr
        assert _alive(pid)
        _ok(mvmctl("rm", "-f", "vb2"))
        assert not _alive(pid)
        assert qemu_pids() == before
        assert mvmctl("inspect", "vb2").returncode != 0
    finally:
        mvmctl("rm", "-f", "vb2")


def test_kill_ends_the_vm_hard_and_keeps_its_row(demo_image: Image) -> None:
    _ok(mvmctl("up", str(demo_image.directory), "--name", "vb3"))
    try:
        pid = _row("vb3")["pid"]
        killed = _ok(mvmctl("kill", "vb3"))
        assert "killed" in killed.stderr
        row = _row("vb3")
        assert row["state"] == "exited", row
        assert "killed by SIGKILL" in str(row["exit_reason"]), row
        assert not _alive(pid)
        nope = mvmctl("kill", "vb3")
        assert nope.stderr.startswith("error[E_VM_NOT_RUNNING]"), nope.stderr
    finally:
        mvmctl("rm", "-f", "vb3")


# ------------------------------------------------------------------ run --attached


@pytest.fixture
def cmd_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "cmd.json"
    spec.write_text(json.dumps({"name": "vcmd", "command": ["/bin/sh", "-c", "exit 9"]}))
    return spec


@pytest.mark.parametrize("status", [0, 1, 7])
def test_run_attached_streams_output_and_exits_with_the_guests_status(
    cmd_spec: Path, status: int
) -> None:
    name = f"att{status}"
    script = f"echo out-{status}; echo err-{status} >&2; exit {status}"
    result = mvmctl(
        "run", "--attached", "--rm", str(cmd_spec), "--name", name, "--", "/bin/sh", "-c", script
    )
    assert result.returncode == status, result.stderr
    assert result.stdout == f"out-{status}\n"  # the app's stdout only: no kernel lines
    assert f"err-{status}\n" in result.stderr and f"out-{status}" not in result.stderr
    gone = mvmctl("inspect", name)  # --rm: the row went with the VM
    assert gone.returncode != 0 and gone.stderr.startswith("error[E_VM_NOT_FOUND]")


def test_a_command_that_ends_at_once_reports_its_status(cmd_spec: Path) -> None:
    """No output, no delay: it may end before the host reads the agent's hello."""
    result = mvmctl("run", "--attached", str(cmd_spec), "--name", "att-fast", "--", "/bin/false")
    try:
        assert result.returncode == 1, result.stderr
        assert "E_AGENT_GONE" not in result.stderr and "error[" not in result.stderr
        row = _row("att-fast")  # without --rm the row stays, with the status
        assert row["state"] == "exited" and row["exit_code"] == 1, row
    finally:
        mvmctl("rm", "att-fast")


def test_run_attached_ctrl_c_exits_130_and_rm_removes_the_row(demo_image: Image) -> None:
    before = qemu_pids()
    proc = subprocess.Popen(
        [*MVMCTL, "run", "--attached", "--rm", "demo", "--name", "att-int", "--", "sleep", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "att-int:" in line and "Ctrl-C" in line, line
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert qemu_pids() == before
    assert mvmctl("inspect", "att-int").stderr.startswith("error[E_VM_NOT_FOUND]")


def test_stop_of_an_attached_run_ends_it_and_start_boots_it_detached(demo_image: Image) -> None:
    """The owner of an attached VM is the `run --attached` command itself: stop asks it
    (SIGTERM), it stops the guest and exits; the row stays for start."""
    proc = subprocess.Popen(
        [*MVMCTL, "run", "--attached", "demo", "--name", "att-stop", "--", "sleep", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "att-stop:" in line and "Ctrl-C" in line, line
        assert _row("att-stop")["mode"] == "attached"
        _ok(mvmctl("stop", "att-stop"))
        assert proc.wait(timeout=60) == 130
        row = _row("att-stop")
        assert row["state"] == "exited", row
        _ok(mvmctl("start", "att-stop"))
        row = _row("att-stop")
        assert row["state"] == "running" and row["mode"] == "detached", row
        assert row["spec"]["mode"] == "detached"  # type: ignore[index]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        mvmctl("rm", "-f", "att-stop")
