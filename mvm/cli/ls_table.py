"""``mvmctl ls``'s table, drawn by rich: columns sized to their widest cell, so a long
VM name widens its column instead of pushing the others out of line.

Imported only when a table is printed (``ls --json`` and every other command never
load rich): ``tests/unit/test_cli_imports.py`` pins what ``ls`` imports.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table

COLUMNS = ("NAME", "BACKEND", "MODE", "STATE", "UPTIME", "ACCESS", "HEALTH", "PORTS")
_WIDE = 100_000  # never fold or crop a cell: a line longer than the terminal just wraps


def ls_cells(row: dict[str, Any], health: str) -> tuple[str, ...]:
    up = f"{row['uptime_s']:.0f}s" if row["uptime_s"] is not None else "-"
    return (
        str(row["name"]),
        str(row["backend"]),
        str(row["mode"]),
        str(row["state"]),
        up,
        str(row["access"]),
        health,
        ",".join(row["ports"]) or "-",
    )


def render_table(rows: Sequence[tuple[str, ...]], out: TextIO | None = None) -> str:
    """The table as text (also written to ``out`` when given). Plain columns, no box,
    no colour unless ``out`` is a terminal; trailing spaces are trimmed."""
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
    for title in COLUMNS:
        table.add_column(title, no_wrap=True, justify="right" if title == "UPTIME" else "left")
    for cells in rows:
        table.add_row(*cells)
    buf = io.StringIO()
    Console(file=buf, width=_WIDE, color_system=None, highlight=False).print(table)
    text = "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"
    if out is not None:
        if out.isatty():
            Console(file=out, width=_WIDE, highlight=False).print(table, crop=False)
        else:
            out.write(text)
            out.flush()
    return text


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    render_table(rows, sys.stdout)
