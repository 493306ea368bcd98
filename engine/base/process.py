"""Process identity that PID reuse cannot fool: pid + kernel start time.

A recorded VMM is "ours" only if a process with that pid exists *and* its start
time (field 22 of /proc/<pid>/stat, clock ticks since boot) matches the one we
recorded when we started it.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def process_start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 overall; fields[0] is field 3


def is_same_process(pid: int | None, start_time: int | None) -> bool:
    if not pid or start_time is None:
        return False
    current = process_start_time(pid)
    if current is None or current != start_time:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_verified(pid: int | None, start_time: int | None, sig: int = signal.SIGKILL) -> bool:
    """Signal a recorded process only if it is still the same process."""
    if pid is None or not is_same_process(pid, start_time):
        return False
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


async def wait_process_exit(pid: int, start_time: int | None = None) -> None:
    """Sleep until a process exits, woken by the kernel (pidfd), not by polling.

    Works for children and for VMMs adopted from another engine alike. The caller
    reaps its own children afterwards (e.g. ``Popen.wait()``) to get the status.
    """
    import anyio

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if start_time is not None and not is_same_process(pid, start_time):
            return  # the pid was reused: the process we meant is gone
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)


VMM_TAG_ENV = "MVM_VMM_RUN_DIR"
"""Set in every VMM's environment to its run directory: the VMM's name tag."""


def processes_tagged(run_dir: str | Path) -> list[tuple[int, int]]:
    """(pid, start time) of every live process whose environment tags it as the VMM of
    ``run_dir`` (``VMM_TAG_ENV``, set when the VMM is spawned).

    This finds a VMM even when its supervisor died before recording its pid: the
    reconciler's last resort against orphans. A tag in the environment, unlike a path
    in the command line, is never carried by an editor or a shell looking at the run
    directory, so nothing but the VMM (and what it spawned, e.g. the jailer's child)
    is ever matched."""
    needle = os.fsencode(f"{VMM_TAG_ENV}={str(run_dir).rstrip('/')}") + b"\0"
    found: list[tuple[int, int]] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if not (environ.startswith(needle) or b"\0" + needle in environ):
            continue
        pid = int(entry.name)
        start = process_start_time(pid)
        if start is not None and is_same_process(pid, start):
            found.append((pid, start))
    return found


async def wait_gone(pid: int, start_time: int | None, timeout: float) -> bool:
    """Whether the process (pid + start time) is gone within ``timeout`` seconds; woken
    by the kernel when it exits (``wait_process_exit``), not by polling."""
    import anyio

    with anyio.move_on_after(timeout):
        await wait_process_exit(pid, start_time)
    return not is_same_process(pid, start_time)
