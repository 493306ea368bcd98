"""``mvmctl run --attached`` on real QEMU: the guest app's own output, live, on the right
streams (never the kernel console), the entrypoint's exit status as ours, Ctrl-C = 130
with the VM torn down (building-microvm-images.txt, "Attached vs detached")."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import pytest
from integration.conftest import qemu_pids

from mvm.backends import nix_meta

from .test_cli_seeds import BUILDING, MY_APP_TOML, mvmctl, ok, project

pytestmark = pytest.mark.qemu

# The seed's lines, verbatim.
RUN_ATTACHED = "mvmctl run --attached # attached mode; CLI Ctrl-C kills VM"

PRINTS_AND_EXITS_7 = """{
  inputs = { mvm.url = "github:tinylabscom/mvm"; };
  outputs = { mvm, ... }: {
    packages.x86_64-linux.default = mvm.lib.x86_64-linux.mkGuest {
      name = "my-app";
      entrypoint.command = [ "/bin/sh" "-c" "echo to-stdout; echo to-stderr >&2; exit 7" ];
    };
  };
}
"""


def _not_console(text: str) -> None:
    """None of the kernel's or /init's console lines leak into the app's streams."""
    for line in text.splitlines():
        assert not line.startswith(("[ ", "mvm-init:", "mvm-agent:", "mvm-err:", "mvm-exit:"))
    assert "Traceback" not in text and "E_AGENT_GONE" not in text


@pytest.mark.skipif(not nix_meta.nix_available(), reason="needs nix-instantiate")
@pytest.mark.seed(BUILDING, "mvmctl run --attached (sealed + attached: exit captured)")
def test_attached_run_streams_stdout_stderr_and_exits_7(tmp_path: Path, seed_outcome) -> None:  # type: ignore[no-untyped-def]
    root = project(tmp_path, PRINTS_AND_EXITS_7, MY_APP_TOML)
    try:
        run = mvmctl(RUN_ATTACHED, root)
        assert run.returncode == 7, run.stderr
        assert run.stdout == "to-stdout\n", run.stdout  # the app's line only, on stdout
        err = run.stderr.splitlines()
        assert "to-stderr" in err and "to-stdout" not in err, run.stderr
        assert err.index("to-stderr") < err.index("my-app: exited (7)"), run.stderr
        _not_console(run.stdout + run.stderr)
        # `mvmctl logs` shows the app's output too, first; --all the whole console
        logs = ok(mvmctl("mvmctl logs my-app", root))
        assert logs.stdout == "to-stdout\n" and logs.stderr == "to-stderr\n", logs
        raw = ok(mvmctl("mvmctl logs my-app --all", root)).stdout
        assert "mvm-init: entrypoint command" in raw and "to-stdout" in raw
    finally:
        ok(mvmctl("mvmctl down my-app", root))
    seed_outcome.works("stdout line on stdout, stderr line on stderr, exit 7; no console lines")


def _spec(tmp_path: Path, name: str, command: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"name": name, "command": command}))
    return path


def test_attached_image_exit_0_prints_only_the_apps_output(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "zero", "i=0; while [ $i -lt 500 ]; do echo line-$i; i=$((i+1)); done")
    run = mvmctl(f"mvmctl run --attached {spec}", tmp_path)
    try:
        assert run.returncode == 0, run.stderr
        assert run.stdout == "".join(f"line-{i}\n" for i in range(500))  # none lost
        _not_console(run.stderr)
    finally:
        mvmctl("mvmctl down zero", tmp_path)


def _line(stream: IO[str], timeout: float = 120) -> str:
    """readline, but a test that waits for a line that never comes fails, not hangs
    (the reader thread ends when the finally below kills the process)."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(stream.readline).result(timeout)
    finally:
        pool.shutdown(wait=False)


def test_attached_ctrl_c_is_130_and_leaves_no_qemu(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "longrun", "echo started; echo warming >&2; exec sleep 600")
    before = qemu_pids()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mvm.cli", "run", "--attached", str(spec)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert _line(proc.stdout) == "started\n"  # live, while the VM runs
        assert "longrun: ready" in _line(proc.stderr)
        assert _line(proc.stderr) == "warming\n"
        assert len(qemu_pids() - before) == 1
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and out == ""
    assert qemu_pids() == before
    mvmctl("mvmctl down longrun", tmp_path)
