"""``mvmctl bench cli`` measures real processes: --help and ls of this venv's mvmctl."""

from __future__ import annotations

import anyio

from mvm.bench.cli import run, summary_line


def test_bench_cli_times_help_ls_and_the_python_floor() -> None:
    result = anyio.run(run, 2, 0)
    for key in ("help_s", "ls_s", "python_s"):
        assert result[key]["n"] == 2 and result[key]["p50"] > 0
    assert result["help_s"]["p50"] > result["python_s"]["p50"]  # mvmctl imports > `pass`
    assert result["help_over_python"] > 1
    assert "--help p50" in summary_line(result)
