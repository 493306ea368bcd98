"""Supervisor: start semantics, reverse-order shielded teardown, restart policies,
budgets, backoff and escalation -- on trio and asyncio."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest
import trio
import trio.testing

from mvm.engine.base.errors import ActorFailed, ConfigError, MvmError, RestartBudgetExhausted
from mvm.engine.runtime.actor import Actor
from mvm.engine.runtime.events import Event, EventBus
from mvm.engine.runtime.supervisor import RestartPolicy, Supervisor

BACKENDS = ["trio", "asyncio"]


class Boom(MvmError):
    code = "E_TEST_BOOM"


class Worker(Actor[str]):
    """Records its lifecycle in a shared journal; behaviour is scripted per attempt."""

    def __init__(
        self,
        name: str,
        journal: list[str],
        *,
        fail_before_start: BaseException | None = None,
        fail_after_start: list[BaseException | None] | None = None,
        returns: bool = False,
        slow_teardown: float = 0.0,
    ) -> None:
        super().__init__(name)
        self.journal = journal
        self.fail_before_start = fail_before_start
        self.fail_after_start = list(fail_after_start or [])
        self.returns = returns
        self.slow_teardown = slow_teardown
        self.runs = 0
        self.teardowns = 0
        self.run_times: list[float] = []
        self.received: list[str] = []

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        self.runs += 1
        self.run_times.append(anyio.current_time())
        self.journal.append(f"run:{self.name}")
        await anyio.lowlevel.checkpoint()
        if self.fail_before_start is not None:
            raise self.fail_before_start
        task_status.started()
        if self.fail_after_start:
            exc = self.fail_after_start.pop(0)
            if exc is not None:
                raise exc
        if self.returns:
            return
        async for msg in self.inbox:
            self.received.append(msg)
            if msg == "crash":
                raise Boom(f"{self.name} crashed on request")

    async def teardown(self) -> None:
        self.teardowns += 1
        # A checkpoint inside teardown: proves the shield holds under cancellation.
        await anyio.sleep(self.slow_teardown)
        self.journal.append(f"teardown:{self.name}")


def teardowns(journal: list[str]) -> list[str]:
    return [entry.split(":", 1)[1] for entry in journal if entry.startswith("teardown:")]


def on_both(scenario: Callable[[], Awaitable[None]]) -> Callable[[str], None]:
    @pytest.mark.parametrize("backend", BACKENDS)
    def test(backend: str) -> None:
        anyio.run(scenario, backend=backend)

    test.__name__ = scenario.__name__
    return test


# -- start / stop / teardown order --------------------------------------------------------------


async def _reverse_order_on_normal_exit() -> None:
    journal: list[str] = []
    async with Supervisor("root") as sup:
        for name in ("a", "b", "c", "d"):
            await sup.start(Worker(name, journal, slow_teardown=0.001))
        assert sup.children == ["a", "b", "c", "d"]
    assert teardowns(journal) == ["d", "c", "b", "a"]


test_reverse_order_on_normal_exit = on_both(_reverse_order_on_normal_exit)


async def _reverse_order_when_body_raises_and_error_is_not_wrapped() -> None:
    journal: list[str] = []
    with pytest.raises(KeyError) as info:
        async with Supervisor("root") as sup:
            for name in ("a", "b", "c"):
                await sup.start(Worker(name, journal, slow_teardown=0.001))
            raise KeyError("body")
    assert info.value.args == ("body",)
    assert teardowns(journal) == ["c", "b", "a"]


test_reverse_order_when_body_raises_and_error_is_not_wrapped = on_both(
    _reverse_order_when_body_raises_and_error_is_not_wrapped
)


async def _reverse_order_under_outer_cancellation() -> None:
    journal: list[str] = []
    workers = [Worker(name, journal, slow_teardown=0.002) for name in "abcde"]
    with anyio.CancelScope() as scope:
        async with Supervisor("root") as sup:
            for worker in workers:
                await sup.start(worker)
            scope.deadline = anyio.current_time() + 0.02
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    assert teardowns(journal) == ["e", "d", "c", "b", "a"]
    assert [w.teardowns for w in workers] == [1] * 5


test_reverse_order_under_outer_cancellation = on_both(_reverse_order_under_outer_cancellation)


async def _start_reraises_childs_own_exception_and_tears_down() -> None:
    journal: list[str] = []
    err = Boom("no disk")
    async with Supervisor("root") as sup:
        await sup.start(Worker("ok", journal))
        bad = Worker("bad", journal, fail_before_start=err)
        with pytest.raises(Boom) as info:
            await sup.start(bad, policy=RestartPolicy(kind="always"))
        assert info.value is err
        assert info.value.code == "E_TEST_BOOM"
        assert bad.teardowns == 1 and bad.runs == 1  # no restart before started
        assert sup.children == ["ok"]
        # The supervisor stays usable: a new child starts, even under the same name.
        await sup.start(Worker("bad", journal))
        assert sup.children == ["ok", "bad"]
    assert teardowns(journal) == ["bad", "bad", "ok"]


test_start_reraises_childs_own_exception_and_tears_down = on_both(
    _start_reraises_childs_own_exception_and_tears_down
)


async def _stop_one_child() -> None:
    journal: list[str] = []
    async with Supervisor("root") as sup:
        a, b = Worker("a", journal), Worker("b", journal)
        await sup.start(a)
        await sup.start(b)
        assert await sup.stop("a") is True
        assert a.teardowns == 1 and sup.children == ["b"]
        assert await sup.stop("a") is False  # already gone: harmless
        with pytest.raises((anyio.ClosedResourceError, anyio.BrokenResourceError)):
            await a.send("late")
    assert teardowns(journal) == ["a", "b"]


test_stop_one_child = on_both(_stop_one_child)


async def _duplicate_names_are_refused() -> None:
    async with Supervisor("root") as sup:
        await sup.start(Worker("a", []))
        with pytest.raises(MvmError) as info:
            await sup.start(Worker("a", []))
        assert info.value.code == "E_ACTOR_NAME_TAKEN"


test_duplicate_names_are_refused = on_both(_duplicate_names_are_refused)


async def _returning_child_is_removed_and_run_without_started_counts() -> None:
    journal: list[str] = []
    async with Supervisor("root") as sup:

        class Once(Actor[None]):
            async def run(
                self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
            ) -> None:
                journal.append("run:once")

            async def teardown(self) -> None:
                journal.append("teardown:once")

        await sup.start(Once("once"), policy=RestartPolicy(kind="on-failure"))
        await anyio.sleep(0.01)
        assert sup.children == []
    assert journal == ["run:once", "teardown:once"]


test_returning_child_is_removed_and_run_without_started_counts = on_both(
    _returning_child_is_removed_and_run_without_started_counts
)


async def _cancelled_start_tears_the_child_down() -> None:
    journal: list[str] = []

    class Slow(Worker):
        async def run(
            self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            self.journal.append("run:slow")
            await anyio.sleep_forever()

    async with Supervisor("root") as sup:
        slow = Slow("slow", journal)
        with anyio.move_on_after(0.02):
            await sup.start(slow)
        assert slow.teardowns == 1 and sup.children == []
        await sup.start(Worker("after", journal))
    assert teardowns(journal) == ["slow", "after"]


test_cancelled_start_tears_the_child_down = on_both(_cancelled_start_tears_the_child_down)


async def _outer_cancel_while_starting_still_tears_down() -> None:
    journal: list[str] = []

    class NeverReady(Worker):
        async def run(
            self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            await anyio.sleep_forever()

    ready = Worker("ready", journal, slow_teardown=0.001)
    never = NeverReady("never", journal, slow_teardown=0.001)
    with anyio.CancelScope() as scope:
        async with Supervisor("root") as sup:
            await sup.start(ready)
            scope.deadline = anyio.current_time() + 0.02  # fires while never is starting
            await sup.start(never)
    assert scope.cancelled_caught
    assert teardowns(journal) == ["never", "ready"]
    assert never.teardowns == 1 and ready.teardowns == 1


test_outer_cancel_while_starting_still_tears_down = on_both(
    _outer_cancel_while_starting_still_tears_down
)


# -- escalation ------------------------------------------------------------------------------------


async def _never_escalates_as_actor_failed() -> None:
    journal: list[str] = []
    bus = EventBus()
    async with bus.subscribe() as events:
        with pytest.raises(ActorFailed) as info:
            async with Supervisor("root", events=bus) as sup:
                await sup.start(Worker("a", journal))
                b = Worker("b", journal)
                await sup.start(b, policy=RestartPolicy(kind="never"))
                await sup.start(Worker("c", journal))
                await b.send("crash")
                await anyio.sleep_forever()
        kinds = []
        with anyio.move_on_after(0.5):
            async for ev in events:
                kinds.append((ev.kind, ev.source))
                if ev.kind == "supervisor.escalated":
                    break
    assert type(info.value) is ActorFailed
    assert info.value.code == "E_ACTOR_FAILED"
    assert "b" in info.value.message
    assert isinstance(info.value.__cause__, Boom)
    assert b.runs == 1
    # b tore down when it failed; then the survivors in reverse start order.
    assert teardowns(journal) == ["b", "c", "a"]
    assert ("actor.failed", "b") in kinds and ("supervisor.escalated", "root") in kinds


test_never_escalates_as_actor_failed = on_both(_never_escalates_as_actor_failed)


async def _escalation_propagates_through_nested_supervisors() -> None:
    journal: list[str] = []

    class Parent(Actor[None]):
        async def run(
            self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            async with Supervisor("inner") as inner:
                child = Worker("leaf", journal)
                await inner.start(child, policy=RestartPolicy(kind="never"))
                task_status.started()
                await child.send("crash")
                await anyio.sleep_forever()

    with pytest.raises(ActorFailed) as info:
        async with Supervisor("outer") as outer:
            await outer.start(Parent("parent"), policy=RestartPolicy(kind="never"))
            await anyio.sleep_forever()
    assert "parent" in info.value.message
    inner_error = info.value.__cause__
    assert isinstance(inner_error, ActorFailed) and "leaf" in inner_error.message
    assert isinstance(inner_error.__cause__, Boom)


test_escalation_propagates_through_nested_supervisors = on_both(
    _escalation_propagates_through_nested_supervisors
)


# -- restarts, budgets and backoff (virtual time on trio) ----------------------------------------


async def test_on_failure_backoff_is_exponential_and_budget_escalates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal: list[str] = []
    bus = EventBus()
    policy = RestartPolicy(
        kind="on-failure",
        max_restarts=3,
        window_s=60,
        backoff_initial_s=0.5,
        backoff_factor=2.0,
        backoff_max_s=1.5,
    )
    crashes: list[BaseException | None] = [Boom(f"crash {i}") for i in range(10)]
    worker = Worker("w", journal, fail_after_start=crashes)
    restarts: list[Event] = []
    async with bus.subscribe() as events:
        with pytest.raises(RestartBudgetExhausted) as info:
            async with Supervisor("root", events=bus) as sup:
                await sup.start(worker, policy=policy)
                await trio.sleep_forever()
        async for ev in events:
            if ev.kind == "actor.restarting":
                restarts.append(ev)
            if ev.kind == "supervisor.escalated":
                break
    assert info.value.code == "E_RESTART_BUDGET"
    assert isinstance(info.value, ActorFailed)
    assert isinstance(info.value.__cause__, Boom)
    # 1 run + 3 restarts, then the 4th failure within the window escalates.
    assert worker.runs == 4 and worker.teardowns == 4
    gaps = [b - a for a, b in zip(worker.run_times, worker.run_times[1:], strict=False)]
    assert gaps == pytest.approx([0.5, 1.0, 1.5])  # 0.5 * 2**n, capped at 1.5
    assert [ev.data["delay"] for ev in restarts] == pytest.approx([0.5, 1.0, 1.5])
    assert [ev.data["attempt"] for ev in restarts] == [2, 3, 4]


async def test_failures_outside_the_window_do_not_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal: list[str] = []
    policy = RestartPolicy(kind="on-failure", max_restarts=2, window_s=10, backoff_initial_s=1)

    class Flaky(Worker):
        async def run(
            self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
        ) -> None:
            self.runs += 1
            self.run_times.append(trio.current_time())
            task_status.started()
            if self.runs <= 6:
                await trio.sleep(30)  # each failure lands after the previous left the window
                raise Boom("periodic")
            await trio.sleep_forever()

    flaky = Flaky("flaky", journal)
    async with Supervisor("root") as sup:
        await sup.start(flaky, policy=policy)
        await trio.sleep(1000)
        assert sup.children == ["flaky"]
    assert flaky.runs == 7 and flaky.teardowns == 7
    # The window emptied each time, so backoff never grew past the initial delay.
    gaps = [b - a for a, b in zip(flaky.run_times, flaky.run_times[1:], strict=False)]
    assert gaps == pytest.approx([31.0] * 6)


async def test_always_restarts_normal_returns_within_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    journal: list[str] = []
    worker = Worker("w", journal, returns=True)
    with pytest.raises(RestartBudgetExhausted):
        async with Supervisor("root") as sup:
            await sup.start(worker, policy=RestartPolicy(kind="always", max_restarts=2))
            await trio.sleep_forever()
    assert worker.runs == 3 and worker.teardowns == 3


async def _restart_keeps_the_inbox() -> None:
    journal: list[str] = []
    worker = Worker("w", journal)
    async with Supervisor("root") as sup:
        await sup.start(worker, policy=RestartPolicy(backoff_initial_s=0.01))
        inbox = worker.inbox
        await worker.send("crash")
        await worker.send("queued-while-restarting")
        with anyio.fail_after(2):
            while "queued-while-restarting" not in worker.received:
                await anyio.sleep(0.005)
        assert worker.inbox is inbox
        assert worker.runs == 2 and worker.teardowns == 1
    assert worker.received == ["crash", "queued-while-restarting"]


test_restart_keeps_the_inbox = on_both(_restart_keeps_the_inbox)


async def _real_time_backoff_bounds() -> None:
    journal: list[str] = []
    policy = RestartPolicy(max_restarts=5, backoff_initial_s=0.02, backoff_factor=2.0)
    worker = Worker("w", journal, fail_after_start=[Boom("1"), Boom("2"), None])
    async with Supervisor("root") as sup:
        await sup.start(worker, policy=policy)
        with anyio.fail_after(2):
            while worker.runs < 3:
                await anyio.sleep(0.005)
    gaps = [b - a for a, b in zip(worker.run_times, worker.run_times[1:], strict=False)]
    assert 0.02 <= gaps[0] < 1.0 and 0.04 <= gaps[1] < 1.0


test_real_time_backoff_bounds = on_both(_real_time_backoff_bounds)


def test_policy_validation_and_backoff_maths() -> None:
    with pytest.raises(ConfigError) as info:
        RestartPolicy(kind="sometimes")  # type: ignore[arg-type]
    assert info.value.code == "E_RESTART_POLICY"
    with pytest.raises(ConfigError):
        RestartPolicy(backoff_factor=0.5)
    policy = RestartPolicy(backoff_initial_s=0.1, backoff_factor=3, backoff_max_s=1)
    assert [policy.backoff(n) for n in range(4)] == pytest.approx([0.1, 0.3, 0.9, 1.0])
    assert policy.backoff(10_000) == 1.0


# -- a tree of 100 actors cancelled mid-flight ---------------------------------------------------


class Branch(Actor[None]):
    """A nested supervisor with ten leaves; records its leaves' teardown order."""

    def __init__(self, name: str, counts: Counter[str], orders: dict[str, list[str]]) -> None:
        super().__init__(name)
        self.counts = counts
        self.orders = orders

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        order = self.orders.setdefault(self.name, [])
        async with Supervisor(self.name) as sup:
            for i in range(10):
                await sup.start(Leaf(f"{self.name}/leaf{i}", self.counts, order))
            task_status.started()
            await anyio.sleep_forever()

    async def teardown(self) -> None:
        self.counts[self.name] += 1
        self.orders.setdefault("root", []).append(self.name)


class Leaf(Actor[None]):
    def __init__(self, name: str, counts: Counter[str], order: list[str]) -> None:
        super().__init__(name)
        self.counts = counts
        self.order = order

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        while True:  # busy "mid-flight" work
            await anyio.sleep(0.001)

    async def teardown(self) -> None:
        await anyio.lowlevel.checkpoint()  # would be skipped without the shield
        self.counts[self.name] += 1
        self.order.append(self.name)


async def _tree_of_100_cancelled_mid_flight() -> None:
    counts: Counter[str] = Counter()
    orders: dict[str, list[str]] = {}
    branches = [f"b{i}" for i in range(10)]
    with anyio.CancelScope() as scope:
        async with Supervisor("root") as sup:
            for name in branches:
                await sup.start(Branch(name, counts, orders))
            assert len(sup.children) == 10
            await anyio.sleep(0.02)  # let the leaves get busy
            scope.cancel()  # from outside the supervisor's point of view
            await anyio.sleep_forever()
    assert scope.cancelled_caught
    leaves = [f"{b}/leaf{i}" for b in branches for i in range(10)]
    assert len(leaves) == 100
    assert all(counts[leaf] == 1 for leaf in leaves), counts
    assert all(counts[b] == 1 for b in branches)
    assert sum(counts.values()) == 110
    assert orders["root"] == branches[::-1]
    for b in branches:
        assert orders[b] == [f"{b}/leaf{i}" for i in reversed(range(10))]


test_tree_of_100_cancelled_mid_flight = on_both(_tree_of_100_cancelled_mid_flight)


async def _lifecycle_events_are_published() -> None:
    bus = EventBus()
    seen: list[tuple[str, str, Any]] = []
    async with bus.subscribe() as events:
        async with Supervisor("root", events=bus) as sup:
            w = Worker("w", [])
            await sup.start(w, policy=RestartPolicy(backoff_initial_s=0))
            await w.send("crash")
            with anyio.fail_after(2):
                while w.runs < 2:
                    await anyio.sleep(0.005)
        with anyio.move_on_after(0.2):
            async for ev in events:
                seen.append((ev.kind, ev.source, dict(ev.data)))
                if ev.kind == "actor.stopped":
                    break
    kinds = [kind for kind, _, _ in seen]
    assert kinds == [
        "actor.started",
        "actor.failed",
        "actor.restarting",
        "actor.started",
        "actor.stopped",
    ]
    failed = seen[1][2]
    assert failed["code"] == "E_TEST_BOOM" and "crashed on request" in failed["error"]
    assert seen[2][2]["attempt"] == 2


test_lifecycle_events_are_published = on_both(_lifecycle_events_are_published)
