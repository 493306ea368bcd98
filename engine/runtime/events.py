"""The engine's event stream: every lifecycle change is one typed :class:`Event`.

``EventBus.publish`` is synchronous and never blocks, so actors and supervisors
can publish from anywhere (including teardown and sync callbacks) without a slow
consumer being able to stall the engine. Each event is also logged through
structlog as a key-value line named after ``event.kind``.

Slow subscribers: each subscription has a bounded buffer. When it is full the
*oldest* buffered event is dropped (newest state wins, which is what a UI or a
``mvmctl events`` tail wants); the subscriber then receives one synthetic
``events.dropped`` event (``data={"count": n}``) at the position of the gap, so
loss is visible rather than silent.

``publish`` must be called from the event loop's thread (anyio streams are not
thread-safe); from a worker thread use ``anyio.from_thread.run_sync``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import attrs
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mvm.engine.base.errors import ConfigError

log = structlog.get_logger("mvm.events")

DROPPED = "events.dropped"

# Keys structlog (or our own line format) already uses; event data under these
# names is logged as ``data_<key>`` instead of clobbering them.
_RESERVED = frozenset({"event", "source", "vm", "level", "timestamp", "logger", "ts"})


@attrs.frozen
class Event:
    """One lifecycle fact. ``data`` is shared by every subscriber: treat it as read-only."""

    kind: str
    source: str
    vm: str | None = None
    data: Mapping[str, Any] = attrs.field(factory=dict)
    ts: float = attrs.field(factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (for ``--json`` output and the state store)."""
        return {
            "kind": self.kind,
            "source": self.source,
            "vm": self.vm,
            "data": dict(self.data),
            "ts": self.ts,
        }


def _is_error(kind: str) -> bool:
    return kind.endswith((".failed", ".escalated"))


class Subscription:
    """Async iterator over the events published since subscribing."""

    def __init__(self, maxsize: int) -> None:
        self._send: MemoryObjectSendStream[Event]
        self._recv: MemoryObjectReceiveStream[Event]
        self._send, self._recv = anyio.create_memory_object_stream[Event](maxsize)
        self._gap = 0
        self.dropped = 0
        """Events dropped for this subscriber so far (oldest-first)."""

    def offer(self, event: Event) -> None:
        try:
            self._send.send_nowait(event)
        except anyio.WouldBlock:
            # Full: make room by discarding the oldest buffered event.
            try:
                self._recv.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return
            self.dropped += 1
            self._gap += 1
            self._send.send_nowait(event)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        if self._gap:
            count, self._gap = self._gap, 0
            return Event(kind=DROPPED, source="eventbus", data={"count": count})
        try:
            return await self._recv.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._send.close()
        self._recv.close()


class EventBus:
    def __init__(self) -> None:
        self._subscribers: list[Subscription] = []
        self.published = 0

    def publish(self, event: Event) -> None:
        """Log ``event`` and hand it to every subscriber; never blocks, never raises
        because of a subscriber."""
        self.published += 1
        fields = {
            (f"data_{key}" if key in _RESERVED else key): value for key, value in event.data.items()
        }
        emit = log.error if _is_error(event.kind) else log.info
        emit(event.kind, source=event.source, vm=event.vm, **fields)
        for sub in tuple(self._subscribers):
            sub.offer(event)

    def subscribe(self, maxsize: int = 1000) -> AbstractAsyncContextManager[AsyncIterator[Event]]:
        """``async with bus.subscribe() as events: async for ev in events: ...``"""
        if maxsize < 1:
            raise ConfigError(
                f"an event subscription needs room for at least one event, not {maxsize}",
                code="E_EVENTS_MAXSIZE",
            )
        return self._subscription(maxsize)

    @asynccontextmanager
    async def _subscription(self, maxsize: int) -> AsyncIterator[AsyncIterator[Event]]:
        sub = Subscription(maxsize)
        self._subscribers.append(sub)
        try:
            yield sub
        finally:
            self._subscribers.remove(sub)
            sub.close()

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)
