"""Why a VMM ended, in words a user can act on, and the guest's own exit status.

/init prints ``mvm-exit: N`` on the console just before it powers the guest off, so a
VMM that exits after that line ended because the guest's entrypoint ended (status N).
Without the line, the VMM's own status says what happened: killed by a signal (``kill
-9``, the OOM killer), or exited with an error. ``ls`` and ``wait`` show this reason.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

_EXIT_LINE = re.compile(rb"mvm-exit: (-?\d+)")


def guest_exit_code(console_log: Path) -> int | None:
    """The entrypoint's exit status as /init printed it, if it did."""
    try:
        data = console_log.read_bytes()[-65536:]
    except OSError:
        return None
    found = _EXIT_LINE.findall(data)
    return int(found[-1]) if found else None


def console_tail(console_log: Path, lines: int = 3) -> str:
    try:
        text = console_log.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " | ".join(kept[-lines:])


def vmm_exit_reason(status: int, guest_code: int | None, *, own_child: bool = True) -> str:
    """The row's exit_reason for a VMM that exited by itself (nobody asked it to).

    An adopted VMM is not our child, so its status is unknown (the kernel tells only
    its parent); its console still says whether the guest ended on its own."""
    if guest_code is not None:
        return "guest exited"
    if not own_child:
        return "VMM exited (status unknown: adopted VMM)"
    if status < 0:
        try:
            name = signal.Signals(-status).name
        except ValueError:
            name = f"signal {-status}"
        return f"VMM killed by {name}"
    if status == 0:
        return "guest powered off"
    return f"VMM exited with status {status}"
