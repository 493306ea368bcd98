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

import enum
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import anyio
import attrs
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mvm.engine.base.errors import ConfigError
from mvm.engine.base.log import get_logger

log = get_logger("mvm.events")


class EventKind(enum.StrEnum):
    """Every kind of :class:`Event` the engine publishes (``Event.kind`` compares equal
    to these: they are ``str``). Documented in the README's "Events" section.

    Boot steps publish ``vm.step.<name>`` as each named step of engine/vm/boot.py starts
    and ``vm.step.<name>.done`` (with ``seconds``) once it succeeded; their members are
    ``STEP_<NAME>`` and ``STEP_<NAME>_DONE``, and tests/unit/test_embedding_api.py fails
    when a step of ``COLD_START``, ``CLONE`` or ``ADOPT`` has none. :meth:`step` gives
    the kind for a step name."""

    # a VM's life (engine/vm/boot.py, engine/vm/runtime.py)
    VM_STARTING = "vm.starting"
    VM_ADOPTED = "vm.adopted"
    VM_IDENTITY = "vm.identity"
    VM_READY = "vm.ready"
    VM_RESTARTING = "vm.restarting"
    VM_RESTARTED = "vm.restarted"
    VM_POWERING_OFF = "vm.powering_off"
    VM_EXITED = "vm.exited"
    VM_DETACHED = "vm.detached"
    VM_STOPPED = "vm.stopped"
    VM_REMOVED = "vm.removed"  # written by the store when a VM's row is removed (down, rm)
    # the guest agent and health checks (mvm.actors)
    AGENT_HELLO = "agent.hello"
    HEALTH_CHANGED = "health.changed"
    HEALTH_RESTART_SERVICE = "health.restart_service"
    # supervision (engine/runtime/supervisor.py)
    ACTOR_STARTED = "actor.started"
    ACTOR_STOPPED = "actor.stopped"
    ACTOR_FAILED = "actor.failed"
    ACTOR_RESTARTING = "actor.restarting"
    ACTOR_TEARDOWN_FAILED = "actor.teardown_failed"
    SUPERVISOR_ESCALATED = "supervisor.escalated"
    # a slow subscriber lost events (data: count)
    EVENTS_DROPPED = "events.dropped"
    # boot steps: vm.step.<name> and vm.step.<name>.done
    STEP_BIND_PORTS = "vm.step.bind_ports"
    STEP_BIND_PORTS_DONE = "vm.step.bind_ports.done"
    STEP_CLAIM_NAME = "vm.step.claim_name"
    STEP_CLAIM_NAME_DONE = "vm.step.claim_name.done"
    STEP_RUN_DIR = "vm.step.run_dir"
    STEP_RUN_DIR_DONE = "vm.step.run_dir.done"
    STEP_VOLUMES = "vm.step.volumes"
    STEP_VOLUMES_DONE = "vm.step.volumes.done"
    STEP_NETWORK = "vm.step.network"
    STEP_NETWORK_DONE = "vm.step.network.done"
    STEP_PREPARE = "vm.step.prepare"
    STEP_PREPARE_DONE = "vm.step.prepare.done"
    STEP_ADMIT = "vm.step.admit"
    STEP_ADMIT_DONE = "vm.step.admit.done"
    STEP_SPAWN_VMM = "vm.step.spawn_vmm"
    STEP_SPAWN_VMM_DONE = "vm.step.spawn_vmm.done"
    STEP_SAVE_PLAN = "vm.step.save_plan"
    STEP_SAVE_PLAN_DONE = "vm.step.save_plan.done"
    STEP_CONNECT_AGENT = "vm.step.connect_agent"
    STEP_CONNECT_AGENT_DONE = "vm.step.connect_agent.done"
    STEP_IDENTITY = "vm.step.identity"
    STEP_IDENTITY_DONE = "vm.step.identity.done"
    STEP_MUX = "vm.step.mux"
    STEP_MUX_DONE = "vm.step.mux.done"
    STEP_FORWARDS = "vm.step.forwards"
    STEP_FORWARDS_DONE = "vm.step.forwards.done"
    STEP_HEALTH = "vm.step.health"
    STEP_HEALTH_DONE = "vm.step.health.done"
    STEP_MARK_RUNNING = "vm.step.mark_running"
    STEP_MARK_RUNNING_DONE = "vm.step.mark_running.done"

    @classmethod
    def step(cls, name: str, *, done: bool = False) -> EventKind:
        """The kind of boot step ``name`` starting (or, with ``done``, finished)."""
        return cls(f"vm.step.{name}{'.done' if done else ''}")


DROPPED = EventKind.EVENTS_DROPPED

# Keys structlog (or our own line format) already uses; event data under these
# names is logged as ``data_<key>`` instead of clobbering them.
_RESERVED = frozenset({"event", "source", "vm", "level", "timestamp", "logger", "ts"})


@attrs.frozen
class Event:
    """One lifecycle fact. ``data`` is shared by every subscriber: treat it as read-only.

    ``kind`` is one of :class:`EventKind` (a ``str``); ``source`` names the actor or
    supervisor that published it; ``vm`` the VM it is about (None for engine-wide
    events); ``ts`` is wall-clock seconds (``time.time()``)."""

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

    def pending(self) -> list[Event]:
        """Every event buffered now, without waiting (a batch for a writer to take)."""
        out: list[Event] = []
        while True:
            try:
                out.append(self._recv.receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return out

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
    """One engine's in-process event stream: ``publish`` never blocks, ``subscribe`` yields
    what follows."""

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
        """How many subscriptions are open (the engine's own event recorder is one)."""
        return len(self._subscribers)
