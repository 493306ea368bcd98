"""A VM's boot as data: an ordered list of named steps over one undo stack.

The shape is firecracker-go-sdk's handler list plus machine.go's cleanup stack: each
step has a name, a ``do`` and, if it acquires something, an ``undo``; ``run_steps``
runs the ``do``s in order and pushes each ``undo`` on an ``AsyncExitStack`` as soon as
its ``do`` returned. Leaving that stack (after the VM ended, after a failure at any step,
under cancellation) runs the undos in reverse, each shielded, each once. There is no
second teardown written by hand: failure and normal stop are the same unwind.

Cold start, clone and adopt are edits of one list by name (``replace``, ``without``,
``insert_after``), so the difference between them reads as a diff of step names. The
step names are also the events (``vm.step.<name>``) and the benchmark's phases, and the
fault-injection points of the kill -9 tests (``MVM_FAULT_KILL_AT``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Generic, TypeVar

import anyio
import attrs

from mvm.engine.base.errors import ConfigError
from mvm.engine.base.log import get_logger
from mvm.engine.base.settings import current_settings

log = get_logger("mvm.vm.steps")

C = TypeVar("C")

Do = Callable[[C], Awaitable[None]]
Undo = Callable[[C], Awaitable[None]]
Notify = Callable[[str, dict[str, object]], None]


@attrs.frozen
class Step(Generic[C]):
    name: str
    do: Do[C]
    undo: Undo[C] | None = None


@attrs.frozen
class Steps(Generic[C]):
    """An ordered, immutable list of steps; edits return a new list."""

    steps: tuple[Step[C], ...]

    def __attrs_post_init__(self) -> None:
        names = [s.name for s in self.steps]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"duplicate boot steps: {', '.join(dup)}", code="E_VM_STEPS")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)

    def __iter__(self) -> Iterator[Step[C]]:
        return iter(self.steps)

    def _index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ConfigError(
                f"no boot step named {name!r} (steps: {', '.join(self.names)})",
                code="E_VM_STEPS",
            ) from None

    def replace(self, name: str, step: Step[C]) -> Steps[C]:
        i = self._index(name)
        return Steps((*self.steps[:i], step, *self.steps[i + 1 :]))

    def without(self, *names: str) -> Steps[C]:
        for name in names:
            self._index(name)
        return Steps(tuple(s for s in self.steps if s.name not in names))

    def split(self, name: str) -> tuple[Steps[C], Steps[C]]:
        """The steps before ``name``, and ``name`` with the rest (a restart redoes those)."""
        i = self._index(name)
        return Steps(self.steps[:i]), Steps(self.steps[i:])

    def insert_after(self, name: str, step: Step[C]) -> Steps[C]:
        i = self._index(name)
        return Steps((*self.steps[: i + 1], step, *self.steps[i + 1 :]))


def fault_step() -> str | None:
    """The step at whose start this process SIGKILLs itself (fault-injection tests)."""
    return current_settings().fault_kill_at


async def run_steps(
    steps: Iterable[Step[C]],
    ctx: C,
    stack: contextlib.AsyncExitStack,
    *,
    notify: Notify,
    kill_at: str | None = None,
) -> None:
    """Run every step's ``do`` in order, pushing its ``undo`` once it succeeded.

    ``notify("vm.step.<name>", {...})`` is called as each step starts and with
    ``seconds`` once it is done. ``kill_at`` names a step at whose start the process
    kills itself with SIGKILL: the state it leaves is exactly "every step before it
    done", which is what the reconciler must cope with."""
    for step in steps:
        if kill_at == step.name:
            log.warning("vm.fault_injected", step=step.name, pid=os.getpid())
            os.kill(os.getpid(), signal.SIGKILL)
        notify(f"vm.step.{step.name}", {})
        t0 = time.monotonic()
        await step.do(ctx)
        if step.undo is not None:
            stack.push_async_callback(_shielded(step.undo, ctx, step.name))
        notify(f"vm.step.{step.name}.done", {"seconds": round(time.monotonic() - t0, 4)})


def _shielded(undo: Undo[C], ctx: C, name: str) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        with anyio.CancelScope(shield=True):
            try:
                await undo(ctx)
            except Exception as exc:  # the unwind goes on: one failed undo must not leak the rest
                log.error("vm.undo_failed", step=name, error=repr(exc))

    return run
