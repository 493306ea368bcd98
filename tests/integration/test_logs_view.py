"""`mvmctl logs` on a real QEMU guest (issue 16): a one-shot command's stdout is the first
thing `logs` prints (it used to be line ~158, after the kernel's dmesg and /init's lines);
--all is the raw console, --tail and --timestamps select and stamp the app's lines."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from .conftest import qemu_pids

pytestmark = pytest.mark.qemu

MVMCTL = [sys.executable, "-m", "mvm.cli"]
SCRIPT = "echo first-line-of-the-app; echo on-stderr >&2; echo last-line-of-the-app"


def mvmctl(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MVMCTL, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_a_one_shot_commands_output_is_what_logs_shows_first(tmp_path: Path) -> None:
    spec = tmp_path / "oneshot.json"
    spec.write_text(json.dumps({"name": "oneshot", "command": ["/bin/sh", "-c", SCRIPT]}))
    before = qemu_pids()
    run = mvmctl("run", "--attached", str(spec), "--name", "oneshot")
    try:
        assert run.returncode == 0, run.stderr
        logs = mvmctl("logs", "oneshot")
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout.splitlines() == ["first-line-of-the-app", "last-line-of-the-app"]
        assert logs.stderr.splitlines() == ["on-stderr"]

        raw = mvmctl("logs", "oneshot", "--all").stdout.splitlines()
        assert raw[0].startswith("["), raw[0]  # the kernel's first line
        assert raw.index("first-line-of-the-app") > 10  # the old default showed all this first
        assert "mvm-err: on-stderr" in raw

        assert mvmctl("logs", "oneshot", "--tail", "1").stdout == "last-line-of-the-app\n"
        stamped = mvmctl("logs", "oneshot", "--timestamps", "--since", "1h").stdout.splitlines()
        assert [line.split(" ", 1)[1] for line in stamped] == [
            "first-line-of-the-app",
            "last-line-of-the-app",
        ]
        for line in stamped:  # an RFC 3339 UTC time within the last hour
            when = datetime.fromisoformat(line.split(" ", 1)[0].replace("Z", "+00:00"))
            assert when.tzinfo is not None
    finally:
        mvmctl("down", "oneshot")
    assert qemu_pids() == before
