"""The boot as data (engine/vm/steps.py): order, edits by name, and the one unwind.

A failure at any step, a cancellation, and the normal end all undo exactly the steps
that were done, in reverse, each once, shielded; and the three lifecycle lists differ
only by the edits that define them."""

from __future__ import annotations

import contextlib

import anyio
import anyio.lowlevel
import pytest

from mvm.engine.base.errors import ConfigError
from mvm.engine.vm.boot import ADOPT, CLONE, COLD_START
from mvm.engine.vm.steps import Step, Steps, run_steps


class Log:
    def __init__(self, fail_at: str | None = None, block_at: str | None = None) -> None:
        self.events: list[str] = []
        self.fail_at = fail_at
        self.block_at = block_at
        self.notified: list[str] = []


def _steps(*names: str, undo: bool = True) -> Steps[Log]:
    def make(name: str) -> Step[Log]:
        async def do(log: Log) -> None:
            if log.fail_at == name:
                raise RuntimeError(name)
            if log.block_at == name:
                await anyio.sleep_forever()
            log.events.append(f"do {name}")

        async def und(log: Log) -> None:
            await (
                anyio.lowlevel.checkpoint()
            )  # a checkpoint: would raise if the undo were not shielded
            log.events.append(f"undo {name}")

        return Step(name, do, und if undo else None)

    return Steps(tuple(make(n) for n in names))


async def _run(steps: Steps[Log], log: Log) -> None:
    async with contextlib.AsyncExitStack() as stack:
        await run_steps(steps, log, stack, notify=lambda kind, _d: log.notified.append(kind))


async def test_normal_end_undoes_everything_in_reverse() -> None:
    log = Log()
    await _run(_steps("a", "b", "c"), log)
    assert log.events == ["do a", "do b", "do c", "undo c", "undo b", "undo a"]
    assert log.notified == [
        "vm.step.a", "vm.step.a.done", "vm.step.b", "vm.step.b.done", "vm.step.c",
        "vm.step.c.done",
    ]  # fmt: skip


@pytest.mark.parametrize("fail_at", ["a", "b", "c"])
async def test_failure_at_any_step_undoes_only_what_was_done(fail_at: str) -> None:
    log = Log(fail_at=fail_at)
    with pytest.raises(RuntimeError, match=fail_at):
        await _run(_steps("a", "b", "c"), log)
    done = [n for n in "abc"][: "abc".index(fail_at)]
    assert log.events == [f"do {n}" for n in done] + [f"undo {n}" for n in reversed(done)]


async def test_cancellation_mid_step_runs_the_undos_shielded() -> None:
    log = Log(block_at="c")
    with anyio.move_on_after(0.05):
        await _run(_steps("a", "b", "c"), log)
    assert log.events == ["do a", "do b", "undo b", "undo a"]


async def test_a_failing_undo_does_not_stop_the_unwind() -> None:
    async def bad(_log: Log) -> None:
        raise OSError("undo broke")

    log = Log()
    steps = _steps("a", "c").insert_after("a", Step("b", _noop, bad))
    await _run(steps, log)
    assert log.events == ["do a", "do c", "undo c", "undo a"]


async def _noop(_log: Log) -> None:
    return None


def test_edits_by_name() -> None:
    steps = _steps("a", "b", "c")
    assert steps.without("b").names == ("a", "c")
    assert steps.insert_after("a", Step("x", _noop)).names == ("a", "x", "b", "c")
    assert steps.replace("b", Step("b", _noop)).names == ("a", "b", "c")
    with pytest.raises(ConfigError) as err:
        steps.without("nope")
    assert err.value.code == "E_VM_STEPS"
    with pytest.raises(ConfigError):
        steps.insert_after("a", Step("c", _noop))  # a duplicate name


def test_the_lifecycle_lists() -> None:
    assert COLD_START.names == (
        "bind_ports", "claim_name", "run_dir", "volumes", "network", "admit", "prepare",
        "spawn_vmm", "save_plan", "connect_agent", "mux", "forwards", "health", "mark_running",
    )  # fmt: skip
    # A clone is a cold start with the snapshot's disks and a new identity.
    assert CLONE.names == (*COLD_START.names[:10], "identity", *COLD_START.names[10:])
    assert [s.do.__name__ for s in CLONE if s.name == "volumes"] == ["clone_volumes"]
    # Adoption makes nothing new: no volumes, no plan, no admission; it attaches.
    assert set(COLD_START.names) - set(ADOPT.names) == {"volumes", "prepare", "admit"}
    assert [s.do.__name__ for s in ADOPT if s.name == "spawn_vmm"] == ["attach_vmm"]
