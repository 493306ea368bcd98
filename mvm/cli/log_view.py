"""What ``mvmctl logs`` shows, as pure functions over the recorded console log.

A VM's ``console.log`` (the serial console the VMM appends to, one file across the
boots of a name) interleaves the kernel's dmesg (``[  1.23] ...``), /init's and the
agent's own lines (``mvm-init:``, ``mvm-agent:``) and the app: a command entrypoint's
stdout, its stderr as ``mvm-err: LINE`` and its end as ``mvm-exit: N`` (see
``attach_output``). The default view is the app's output only, so a one-shot
command's stdout is the first thing ``logs`` prints; ``--all`` (``--console``) is the
raw console.

Time: the console has no clock of its own. A kernel line carries the guest's uptime,
``mvm-init: ready uptime=X`` too; other lines take the last uptime seen before them.
The current boot's uptime is placed on the wall clock with the store's ``started_at``
(the moment the agent said hello, which /init's ``ready`` line precedes by a hair):
so times are estimates to a fraction of a second. Earlier boots of the same name have
no known start: their lines have no time (``--since`` leaves them out).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import attrs

from mvm.cli.attach_output import START_MARK, classify

_KERNEL = re.compile(rb"^\[\s*(\d+\.\d+)\] ")
_BOOT = re.compile(rb"^\[\s*0\.0+\] Linux version ")
_READY = re.compile(rb"^mvm-init: ready uptime=(\d+(?:\.\d+)?)")


@attrs.frozen
class LogLine:
    """One line as ``logs`` prints it. ``source`` is ``console`` (a raw console line),
    ``app`` (the entrypoint's output) or a service name; ``ts`` is a wall-clock
    estimate, ``None`` where unknown."""

    source: str
    text: str
    fd: int = 1
    ts: float | None = None

    def render(self, *, timestamps: bool) -> str:
        body = (
            f"[{self.source}] {self.text}" if self.source not in ("console", "app") else self.text
        )
        if not timestamps:
            return body
        return f"{format_ts(self.ts)} {body}"


def format_ts(ts: float | None) -> str:
    """RFC 3339 UTC with milliseconds; ``-`` padded to the same width when unknown."""
    if ts is None:
        return "-".ljust(24)
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@attrs.define
class _Boot:
    uptime: float = 0.0
    ready_uptime: float | None = None
    started: bool = False  # the entrypoint marker was seen (app view)
    ended: bool = False  # its exit line was seen


@attrs.define
class ConsoleFilter:
    """Turns console bytes, fed in any chunks, into :class:`LogLine` s.

    ``app_only``: the entrypoint's output of every boot (what follows /init's
    ``entrypoint command`` line up to ``mvm-exit``, without kernel, init or agent
    lines); otherwise every line. Lines carry ``(boot index, uptime)`` until
    :meth:`stamp` places the last boot on the wall clock."""

    app_only: bool = True
    boots: list[_Boot] = attrs.field(factory=lambda: [_Boot()])
    _partial: bytes = b""
    _pending: list[tuple[int, float, LogLine]] = attrs.field(factory=list)

    def feed(self, data: bytes, *, final: bool = False) -> None:
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = b"" if final else lines.pop()
        if final and lines and not lines[-1]:
            lines.pop()  # the newline that ends the file starts no line
        for raw in lines:
            self._line(raw.rstrip(b"\r"))

    def _line(self, raw: bytes) -> None:
        if _BOOT.match(raw) and (self.boots[-1].uptime > 0 or self.boots[-1].started):
            self.boots.append(_Boot())
        boot = self.boots[-1]
        if m := _KERNEL.match(raw):
            boot.uptime = float(m.group(1))
        elif m := _READY.match(raw):
            boot.uptime = boot.ready_uptime = float(m.group(1))
        index = len(self.boots) - 1
        if not self.app_only:
            self._emit(index, boot.uptime, LogLine("console", raw.decode(errors="replace")))
            return
        if not boot.started:
            boot.started = raw.startswith(START_MARK)
            return
        if boot.ended:
            return
        item = classify(raw)
        if item is None:
            return
        fd, text = item
        if fd == 0:
            boot.ended = True
            return
        self._emit(
            index, boot.uptime, LogLine("app", text.rstrip(b"\n").decode(errors="replace"), fd)
        )

    def _emit(self, boot: int, uptime: float, line: LogLine) -> None:
        self._pending.append((boot, uptime, line))

    def take(self, started_at: float | None) -> list[LogLine]:
        """The lines parsed so far (then forgotten), the last boot's with wall times."""
        last = len(self.boots) - 1
        origin = None
        if started_at is not None:
            ready = self.boots[last].ready_uptime
            origin = started_at - (ready if ready is not None else 0.0)
        out = [
            attrs.evolve(line, ts=origin + uptime if boot == last and origin is not None else None)
            for boot, uptime, line in self._pending
        ]
        self._pending.clear()
        return out


def console_view(data: bytes, *, app_only: bool, started_at: float | None) -> list[LogLine]:
    """Every line of a recorded console log the view shows, stamped where possible."""
    view = ConsoleFilter(app_only=app_only)
    view.feed(data, final=True)
    return view.take(started_at)


def select(
    lines: Iterable[LogLine], *, since: float | None = None, tail: int | None = None
) -> list[LogLine]:
    """``--since`` keeps lines known to be at or after it (a line with no time is not);
    then ``--tail N`` keeps the last N."""
    kept = [ln for ln in lines if since is None or (ln.ts is not None and ln.ts >= since)]
    if tail is not None:
        kept = kept[-tail:] if tail > 0 else []
    return kept


def count_by_source(lines: Sequence[LogLine]) -> dict[str, int]:
    """How many lines each service contributed (to skip them when following)."""
    counts: dict[str, int] = {}
    for ln in lines:
        counts[ln.source] = counts.get(ln.source, 0) + 1
    return counts
