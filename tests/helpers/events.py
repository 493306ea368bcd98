"""Reading ``mvmctl events --json`` as it streams, from a test."""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import IO, Any


def lines_of(stream: IO[str]) -> queue.Queue[str]:
    """The stream's lines, read by a daemon thread, so a test can wait with a timeout."""
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            out.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return out


def events_until(
    lines: queue.Queue[str], vm: str, kind: str, timeout: float
) -> list[dict[str, Any]]:
    """Events read up to the first ``kind`` of ``vm`` (AssertionError after ``timeout``)."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {kind} of {vm} in {[e['kind'] for e in seen]}"
        try:
            ev = json.loads(lines.get(timeout=left))
        except queue.Empty:
            continue
        seen.append(ev)
        if ev["vm"] == vm and ev["kind"] == kind:
            return seen
