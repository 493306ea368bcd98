"""`mvmctl bench` leaves nothing in the user's `mvmctl ls` (issue 13): every run gets a
throwaway `$MVM_HOME`, removed afterwards, also when the benchmark fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mvm.bench.home import throwaway_home


def _mvmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bench_scale_leaves_no_rows_in_the_users_home(mvm_home: Path) -> None:
    """bench scale (stub VMs: no kernel needed) with the user's $MVM_HOME set: its VMs
    (s0, s1) used to stay there as exited rows."""
    bench = _mvmctl("bench", "scale", "--count", "2", "--runs", "1", "--warmup", "0")
    assert bench.returncode == 0, bench.stderr
    assert json.loads(bench.stdout)["count"] == 2  # it did start VMs
    ls = _mvmctl("ls", "--json")
    assert ls.returncode == 0, ls.stderr
    assert json.loads(ls.stdout) == []
    assert not (mvm_home / "vms").exists() or not any((mvm_home / "vms").iterdir())


def test_throwaway_home_is_restored_and_removed_on_failure(mvm_home: Path) -> None:
    with pytest.raises(RuntimeError), throwaway_home() as home:
        assert os.environ["MVM_HOME"] == str(home) and home.is_dir()
        (home / "vms").mkdir()
        raise RuntimeError("the benchmark failed")
    assert os.environ["MVM_HOME"] == str(mvm_home)
    assert not home.exists()


def test_throwaway_home_unsets_what_was_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MVM_HOME")
    with throwaway_home() as home:
        assert os.environ["MVM_HOME"] == str(home)
    assert "MVM_HOME" not in os.environ and not home.exists()
