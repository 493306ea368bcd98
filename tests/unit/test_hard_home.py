"""$MVM_HOME is private (0700 dirs, 0600 files) whoever creates it, and an unwritable
home is one coded line, not a traceback (issue 15)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest


def _mvmctl(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MVM_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def _modes(home: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(home.stat().st_mode)}
    for p in home.rglob("*"):
        out[str(p.relative_to(home))] = stat.S_IMODE(p.lstat().st_mode)
    return out


@pytest.mark.parametrize("first", [("doctor",), ("audit", "verify")])
def test_first_command_creates_private_home(tmp_path: Path, first: tuple[str, ...]) -> None:
    old = os.umask(0o022)
    try:
        home = tmp_path / "fresh" / "mvm-home"
        _mvmctl(*first, home=home)
    finally:
        os.umask(old)
    modes = _modes(home)
    assert modes["."] == 0o700, modes
    for name, mode in modes.items():
        is_dir = (home / name).is_dir()
        assert mode & 0o077 == 0, f"{name} is {mode:04o}"
        if not is_dir:
            assert mode == 0o600, f"{name} is {mode:04o}"


@pytest.mark.parametrize("command", [("up", "--backend", "stub"), ("audit", "verify")])
def test_unwritable_home_is_one_coded_line(tmp_path: Path, command: tuple[str, ...]) -> None:
    """A home that cannot be created (its parent is a file: fails for root too, unlike
    a chmod 0500 directory) gives one coded line and no traceback."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = _mvmctl(*command, home=blocker / "home")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error[E_HOME_UNWRITABLE]"), result.stderr


def test_doctor_says_stub_isolates_nothing(tmp_path: Path) -> None:
    result = _mvmctl("doctor", home=tmp_path / "h")
    stub = [line for line in result.stdout.splitlines() if " stub " in f" {line} "]
    assert stub and "ISOLATES NOTHING" in stub[0], result.stdout


@pytest.mark.parametrize("verb", ["up", "run"])
def test_help_says_stub_isolates_nothing(tmp_path: Path, verb: str) -> None:
    """--help of every verb that takes --backend warns about the stub (issue 15)."""
    result = _mvmctl(verb, "--help", home=tmp_path / "h")
    text = " ".join(result.stdout.split())
    assert "stub: tests only, it ISOLATES NOTHING" in text, result.stdout


def test_up_on_stub_leaves_nothing_readable_by_others(tmp_path: Path) -> None:
    """console.log, plan.json and the rest of a VM's run directory are private."""
    home = tmp_path / "h"
    old = os.umask(0o022)
    try:
        up = _mvmctl("up", "--backend", "stub", "--name", "permvm", home=home)
        assert up.returncode == 0, up.stderr
        try:
            modes = _modes(home)
        finally:
            _mvmctl("down", "permvm", home=home)
    finally:
        os.umask(old)
    run_dir = "vms/permvm"
    assert modes[run_dir] == 0o700
    assert modes[f"{run_dir}/console.log"] == 0o600
    assert modes[f"{run_dir}/plan.json"] == 0o600
    loose = {n: f"{m:04o}" for n, m in modes.items() if m & 0o077}
    assert not loose, loose


def test_full_disk_is_its_own_code(tmp_path: Path) -> None:
    import errno

    from mvm.engine.base.paths import home_error

    full = home_error(tmp_path, OSError(errno.ENOSPC, "No space left on device"))
    ro = home_error(tmp_path, OSError(errno.EROFS, "Read-only file system"))
    assert getattr(full, "code", None) == "E_DISK_FULL"
    assert getattr(ro, "code", None) == "E_HOME_UNWRITABLE"
