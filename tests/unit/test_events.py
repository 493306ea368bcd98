"""Event bus (ordering, slow subscribers, structlog output) and logging setup."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import anyio
import anyio.lowlevel
import pytest
import structlog

from mvm.engine.base.errors import ConfigError
from mvm.engine.base.log import configure_logging
from mvm.engine.runtime.events import DROPPED, Event, EventBus


@pytest.fixture
def restore_logging() -> Iterator[None]:
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers[:] = handlers
    root.setLevel(level)


def ev(i: int) -> Event:
    return Event(kind="test.tick", source="t", data={"i": i})


def test_event_defaults() -> None:
    before = time.time()
    a, b = Event(kind="k", source="s"), Event(kind="k", source="s")
    assert a.data == {} and a.data is not b.data
    assert a.vm is None and before <= a.ts <= time.time()
    assert a.as_dict()["kind"] == "k"


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_subscribers_receive_events_in_order(backend: str) -> None:
    async def scenario() -> None:
        bus = EventBus()
        got: dict[str, list[int]] = {"a": [], "b": []}

        async def consume(name: str, events: object, n: int) -> None:
            async for event in events:  # type: ignore[attr-defined]
                got[name].append(event.data["i"])
                if len(got[name]) == n:
                    return

        async with (
            bus.subscribe() as a,
            bus.subscribe() as b,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(consume, "a", a, 300)
            tg.start_soon(consume, "b", b, 300)
            for i in range(300):
                bus.publish(ev(i))
                if i % 7 == 0:
                    await anyio.lowlevel.checkpoint()
        assert got["a"] == list(range(300)) and got["b"] == list(range(300))
        assert bus.subscriber_count == 0

    anyio.run(scenario, backend=backend)


async def test_slow_subscriber_never_blocks_publish_and_drops_oldest() -> None:
    bus = EventBus()
    async with bus.subscribe(maxsize=10) as slow, bus.subscribe(maxsize=1000) as fast:
        start = time.perf_counter()
        for i in range(500):  # nobody reads while we publish
            bus.publish(ev(i))
        assert time.perf_counter() - start < 1.0
        first = await slow.__anext__()
        assert first.kind == DROPPED and first.data["count"] == 490
        rest = [(await slow.__anext__()).data["i"] for _ in range(10)]
        assert rest == list(range(490, 500))  # the newest survive, in order
        assert [(await fast.__anext__()).data["i"] for _ in range(500)] == list(range(500))
        bus.publish(ev(500))
        assert (await slow.__anext__()).data["i"] == 500


async def test_publish_without_subscribers_and_after_unsubscribe() -> None:
    bus = EventBus()
    bus.publish(ev(0))
    async with bus.subscribe() as events:
        bus.publish(ev(1))
    bus.publish(ev(2))  # the closed subscription is gone, nothing raises
    assert bus.published == 3
    assert [e async for e in events] == []  # closed: iteration simply ends


def test_subscribe_needs_room() -> None:
    with pytest.raises(ConfigError) as info:
        EventBus().subscribe(maxsize=0)
    assert info.value.code == "E_EVENTS_MAXSIZE"


def test_events_are_logged_as_json_to_stderr(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(json=True, level="info")
    bus = EventBus()
    bus.publish(Event(kind="vm.ready", source="vm/a", vm="a", data={"boot_s": 0.7, "event": "x"}))
    bus.publish(Event(kind="actor.failed", source="vm/a/agent", data={"code": "E_AGENT"}))
    out = capsys.readouterr()
    assert out.out == ""
    lines = [json.loads(line) for line in out.err.splitlines()]
    assert lines[0]["event"] == "vm.ready" and lines[0]["vm"] == "a"
    assert lines[0]["boot_s"] == 0.7 and lines[0]["data_event"] == "x"
    assert lines[0]["level"] == "info" and "timestamp" in lines[0]
    assert lines[1]["event"] == "actor.failed" and lines[1]["level"] == "error"


def test_level_filtering_console_renderer_and_idempotence(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(json=False, level="warning")
    configure_logging(json=False, level="warning")  # twice: still one handler
    marked = [h for h in logging.getLogger().handlers if getattr(h, "_mvm_handler", False)]
    assert len(marked) == 1
    log = structlog.get_logger("t")
    log.info("hidden.info", x=1)
    log.warning("shown.warning", x=2)
    logging.getLogger("thirdparty").warning("stdlib says %s", "hi")
    logging.getLogger("thirdparty").info("stdlib quiet")
    err = capsys.readouterr().err
    assert "hidden.info" not in err and "stdlib quiet" not in err
    assert "shown.warning" in err and "x=2" in err
    assert "stdlib says hi" in err
    # Reconfiguring switches renderer and level.
    configure_logging(json=True, level="debug")
    log.debug("now.visible", y=3)
    line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert line == {**line, "event": "now.visible", "y": 3, "level": "debug"}


def test_unknown_level_is_a_coded_error(restore_logging: None) -> None:
    with pytest.raises(ConfigError) as info:
        configure_logging(level="chatty")
    assert info.value.code == "E_LOG_LEVEL"
