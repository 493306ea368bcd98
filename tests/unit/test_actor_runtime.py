"""Actors and messages: inbox, request/reply with timeouts, cattrs wire round-trips --
on trio and asyncio."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial

import anyio
import anyio.abc
import attrs
import pytest

from mvm.engine.base.errors import ActorStopped, ConfigError, MessageError, MvmError, RequestTimeout
from mvm.engine.runtime.actor import Actor, Reply, ask
from mvm.engine.runtime.messages import MessageRegistry, from_wire, to_wire
from mvm.engine.runtime.supervisor import RestartPolicy, Supervisor

BACKENDS = ["trio", "asyncio"]


def on_both(scenario: Callable[[], Awaitable[None]]) -> Callable[[str], None]:
    @pytest.mark.parametrize("backend", BACKENDS)
    def test(backend: str) -> None:
        anyio.run(scenario, backend=backend)

    test.__name__ = scenario.__name__
    return test


class NotAllowed(MvmError):
    code = "E_TEST_NOT_ALLOWED"


@attrs.frozen
class Add:
    a: int
    b: int
    reply: Reply[int]


@attrs.frozen
class Ignore:
    reply: Reply[int]


@attrs.frozen
class Refuse:
    reply: Reply[int]


Request = Add | Ignore | Refuse


class Calculator(Actor[Request]):
    def __init__(self, name: str = "calc", *, delay: float = 0.0, inbox_size: int = 64) -> None:
        super().__init__(name, inbox_size=inbox_size)
        self.delay = delay
        self.handled = 0

    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        async for msg in self.inbox:
            self.handled += 1
            await anyio.sleep(self.delay)
            if isinstance(msg, Add):
                msg.reply.send(msg.a + msg.b)
            elif isinstance(msg, Refuse):
                msg.reply.fail(NotAllowed("calculator says no"))
            # Ignore: drop it on the floor


async def _ask_gets_the_answer() -> None:
    async with Supervisor("root") as sup:
        calc = Calculator()
        await sup.start(calc)
        assert await ask(calc, lambda r: Add(2, 3, r), timeout=1) == 5
        results = []
        for i in range(50):
            results.append(await ask(calc, partial(Add, i, i), timeout=1))
        assert results == [2 * i for i in range(50)]


test_ask_gets_the_answer = on_both(_ask_gets_the_answer)


async def _ask_times_out_with_a_coded_error() -> None:
    async with Supervisor("root") as sup:
        calc = Calculator()
        await sup.start(calc)
        start = anyio.current_time()
        with pytest.raises(RequestTimeout) as info:
            await ask(calc, Ignore, timeout=0.05)
        elapsed = anyio.current_time() - start
        assert info.value.code == "E_TIMEOUT"
        assert "calc" in info.value.message and "Ignore" in info.value.message
        assert 0.05 <= elapsed < 1.0
        # A slow actor times out too, and its late answer is harmlessly refused.
        calc.delay = 0.2
        with pytest.raises(RequestTimeout):
            await ask(calc, lambda r: Add(1, 1, r), timeout=0.02)
        calc.delay = 0
        assert await ask(calc, lambda r: Add(1, 1, r), timeout=1) == 2


test_ask_times_out_with_a_coded_error = on_both(_ask_times_out_with_a_coded_error)


async def _reply_fail_raises_in_the_asker() -> None:
    async with Supervisor("root") as sup:
        calc = Calculator()
        await sup.start(calc)
        with pytest.raises(NotAllowed) as info:
            await ask(calc, Refuse, timeout=1)
        assert info.value.code == "E_TEST_NOT_ALLOWED"


test_reply_fail_raises_in_the_asker = on_both(_reply_fail_raises_in_the_asker)


async def _ended_actor_refuses_requests_and_fails_queued_ones() -> None:
    async with Supervisor("root") as sup:
        calc = Calculator(delay=0.05)
        await sup.start(calc, policy=RestartPolicy(kind="never"))
        outcomes: dict[int, tuple[str, float]] = {}

        async def asker(i: int, timeout: float) -> None:
            try:
                await ask(calc, lambda r: Add(i, 0, r), timeout=timeout)
                outcomes[i] = ("answered", anyio.current_time())
            except MvmError as exc:
                outcomes[i] = (exc.code, anyio.current_time())

        async with anyio.create_task_group() as tg:
            # Request 0 is taken from the inbox and in flight when the actor stops:
            # nobody can answer it, so only its deadline ends the wait.
            tg.start_soon(asker, 0, 0.3)
            await anyio.sleep(0.01)
            for i in (1, 2, 3):
                tg.start_soon(asker, i, 5.0)
            await anyio.sleep(0.01)
            stopped_at = anyio.current_time()
            await sup.stop("calc")
        assert outcomes[0][0] == "E_TIMEOUT"
        # Queued requests fail at once with ActorStopped instead of waiting 5 s.
        for i in (1, 2, 3):
            code, when = outcomes[i]
            assert code == "E_ACTOR_STOPPED"
            assert when - stopped_at < 1.0
        with pytest.raises(ActorStopped) as info:
            await ask(calc, lambda r: Add(1, 1, r), timeout=1)
        assert info.value.code == "E_ACTOR_STOPPED"
        with pytest.raises((anyio.ClosedResourceError, anyio.BrokenResourceError)):
            await calc.send(Add(1, 1, Reply()))


test_ended_actor_refuses_requests_and_fails_queued_ones = on_both(
    _ended_actor_refuses_requests_and_fails_queued_ones
)


async def _full_inbox_applies_backpressure() -> None:
    calc = Calculator(inbox_size=2)  # not started: nothing drains the inbox
    await calc.send(Ignore(Reply()))
    await calc.send(Ignore(Reply()))
    with pytest.raises(anyio.WouldBlock):
        calc.send_nowait(Ignore(Reply()))
    with pytest.raises(RequestTimeout):
        await ask(calc, lambda r: Add(1, 2, r), timeout=0.05)
    calc._close_inbox()


test_full_inbox_applies_backpressure = on_both(_full_inbox_applies_backpressure)


def test_reply_is_one_shot() -> None:
    async def scenario() -> None:
        reply: Reply[int] = Reply()
        assert reply.send(1) is True
        assert reply.send(2) is False
        assert reply.fail(ValueError()) is False
        assert await reply.wait() == 1
        reply.close()

    anyio.run(scenario, backend="trio")


def test_actor_needs_a_name() -> None:
    with pytest.raises(ConfigError) as info:
        Calculator("")
    assert info.value.code == "E_ACTOR_NAME"


# -- messages over the wire ------------------------------------------------------------------------

registry = MessageRegistry()


@registry.register("vm.stop")
@attrs.frozen
class StopVm:
    reason: str = "requested"
    grace_s: float = 10.0


@registry.register("vm.forward")
@attrs.frozen
class AddForward:
    host_port: int
    guest_port: int
    tags: tuple[str, ...] = ()
    note: str | None = None


def test_messages_round_trip_through_json() -> None:
    for msg in (StopVm(), StopVm("bye", 0.5), AddForward(8080, 80, ("web",), "hi")):
        wire = to_wire(msg, registry)
        assert wire["type"] in ("vm.stop", "vm.forward")
        assert from_wire(json.loads(json.dumps(wire)), registry) == msg
    assert to_wire(AddForward(1, 2), registry) == {
        "type": "vm.forward",
        "host_port": 1,
        "guest_port": 2,
        "tags": [],
        "note": None,
    }


def test_unknown_fields_are_rejected() -> None:
    with pytest.raises(MessageError) as info:
        from_wire({"type": "vm.stop", "reason": "x", "force": True}, registry)
    assert info.value.code == "E_MESSAGE_UNKNOWN_FIELD"
    assert "force" in info.value.message


def test_unknown_type_and_bad_values_are_rejected() -> None:
    with pytest.raises(MessageError) as info:
        from_wire({"type": "vm.explode"}, registry)
    assert info.value.code == "E_MESSAGE_UNKNOWN_TYPE"
    with pytest.raises(MessageError) as info:
        from_wire({"reason": "no tag"}, registry)
    assert info.value.code == "E_MESSAGE_INVALID"
    with pytest.raises(MessageError) as info:
        from_wire({"type": "vm.forward", "host_port": "eighty"}, registry)
    assert info.value.code == "E_MESSAGE_INVALID"
    assert "guest_port" in info.value.message or "host_port" in info.value.message


def test_unregistered_and_reply_carrying_messages_cannot_leave() -> None:
    with pytest.raises(MessageError) as info:
        to_wire(Ignore(Reply()), registry)
    assert info.value.code == "E_MESSAGE_UNKNOWN_TYPE"
    local = MessageRegistry()
    local.register("calc.add")(Add)
    reply: Reply[int] = Reply()
    with pytest.raises(MessageError) as info:
        to_wire(Add(1, 2, reply), local)
    assert info.value.code == "E_MESSAGE_NOT_WIRE"
    reply.close()


def test_registry_refuses_conflicts() -> None:
    local = MessageRegistry()
    local.register("a")(StopVm)
    local.register("a")(StopVm)  # idempotent
    with pytest.raises(MessageError) as info:
        local.register("a")(AddForward)
    assert info.value.code == "E_MESSAGE_DUPLICATE"

    @attrs.frozen
    class Tagged:
        type: str

    with pytest.raises(MessageError):
        local.register("t")(Tagged)
