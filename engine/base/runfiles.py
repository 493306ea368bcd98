"""The per-VM run directory and which of its files are transient.

Transient files (sockets, overlays, pid files) must not outlive the VM; the
console log and mode.json stay for ``logs`` and humans until ``down``/``cleanup``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

TRANSIENT_SUFFIXES = (".sock", ".pid", ".qcow2", ".overlay", ".tmp")
PLAN_FILE = "plan.json"  # what was sent to the VMM: engine/vm/planfile.py; adoption reads it


def remove_run_files(run_dir: str | Path) -> None:
    root = Path(run_dir)
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.endswith(TRANSIENT_SUFFIXES):
            path.unlink(missing_ok=True)


def remove_run_dir(run_dir: str | Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
