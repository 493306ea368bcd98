"""`mvmctl ls` as a table whose columns hold a 40-character name (issue 16: names over
16 characters pushed every later column out of line), and `status` for humans by
default, JSON with --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers.records import vm_row

from mvm.cli.ls_table import COLUMNS, render_table
from mvm.engine.store import StateStore, VmRecord

LONG = "a-very-long-vm-name-of-forty-characters-"  # 40 characters


def _mvmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _row(name: str, home: Path) -> VmRecord:
    return vm_row(name, home, backend="cloud-hypervisor")


def _starts(line: str) -> list[int]:
    """Where each column's cell begins, by the header's titles."""
    return [line.index(title) for title in COLUMNS]


def test_every_column_starts_where_its_title_does() -> None:
    rows = [
        (LONG, "qemu", "detached", "running", "12s", "accessible", "healthy", "127.0.0.1:8080->80"),
        ("db", "cloud-hypervisor", "attached", "exited", "-", "sealed", "-", "-"),
    ]
    header, *lines = render_table(rows).splitlines()
    starts = _starts(header)
    assert starts == sorted(starts) and starts[1] > len(LONG)
    for cells, line in zip(rows, lines, strict=True):
        for title, start, cell in zip(COLUMNS, starts, cells, strict=True):
            if title == "UPTIME":  # right-aligned under its title
                end = start + len(title)
                assert line[:end].endswith(cell), (line, cell)
            else:
                assert line[start:].startswith(cell), (title, line)


async def test_ls_and_status_of_a_long_named_vm(mvm_home: Path) -> None:
    async with StateStore.open(mvm_home / "state.db") as store:
        await store.insert_vm(_row(LONG, mvm_home))
        await store.insert_vm(_row("b", mvm_home))
    table = _mvmctl("ls")
    assert table.returncode == 0, table.stderr
    header, *lines = table.stdout.splitlines()
    starts = _starts(header)
    for line in lines:
        name, backend = line[: starts[1]].strip(), line[starts[1] : starts[2]].strip()
        assert name in (LONG, "b") and backend == "cloud-hypervisor", line
        assert line[starts[3] :].startswith("exited"), line
    listed = json.loads(_mvmctl("ls", "--json").stdout)
    assert sorted(r["name"] for r in listed) == sorted([LONG, "b"])

    human = _mvmctl("status", LONG)
    assert human.returncode == 0, human.stderr
    assert f"name:       {LONG}" in human.stdout.splitlines()
    assert "state:      exited" in human.stdout.splitlines()
    assert "exit:       0 (guest exited)" in human.stdout.splitlines()
    as_json = json.loads(_mvmctl("status", LONG, "--json").stdout)
    assert as_json["name"] == LONG and as_json["state"] == "exited" and "uids" in as_json
    missing = _mvmctl("status", "nope")
    assert missing.returncode != 0 and missing.stderr.startswith("error[E_VM_NOT_FOUND]")


def test_json_listing_does_not_load_the_table_module() -> None:
    """(rich itself is loaded anyway: structlog.dev imports rich.traceback, which imports
    rich.console and rich.table, when the CLI sets up logging.)"""
    code = (
        "import sys\nfrom mvm.cli.app import main\n"
        "try:\n    main(['ls', '--json'])\nexcept SystemExit:\n    pass\n"
        "print('mvm.cli.ls_table' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "False"
