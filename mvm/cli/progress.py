"""A rich progress display for slow builds (the kernel build takes minutes)."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class BuildProgress:
    """Callable sink for ``progress(phase, fraction)`` updates; silent when not a TTY."""

    def __init__(self, *, enabled: bool = True) -> None:
        self._enabled = enabled and sys.stderr.isatty()
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._phase = ""

    def __enter__(self) -> BuildProgress:
        if self._enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._progress.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, phase: str, fraction: float | None) -> None:
        if self._progress is None:
            if phase != self._phase and not self._enabled and phase.startswith("kernel"):
                print(f"mvm: {phase}", file=sys.stderr)
            self._phase = phase
            return
        if self._task is None:
            self._task = self._progress.add_task(phase, total=1.0)
        self._progress.update(
            self._task,
            description=phase,
            completed=fraction if fraction is not None else 0.0,
            total=1.0 if fraction is not None else None,
        )
        self._phase = phase
