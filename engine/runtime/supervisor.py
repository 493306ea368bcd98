"""Supervisor: owns a task group of actors, restarts them by policy, tears them down in order.

Guarantees (the tests hold us to them):

* ``start()`` returns once the child called ``task_status.started()`` (or returned).
  A child that fails before that point has its teardown run and its *own* exception
  raised from ``start()``; the supervisor stays usable.
* Leaving ``async with Supervisor(...)`` -- normally, by an exception or by
  cancellation -- stops the children one at a time in reverse start order; each
  teardown runs shielded and exactly once per run attempt. Under an outer
  cancellation every ``run()`` sees the cancellation at once, but teardowns are
  still sequenced: a child whose run ended waits (shielded) for its turn.
* Policies: ``never`` escalates a failure; ``on-failure`` restarts failures with
  exponential backoff; ``always`` also restarts normal returns. More than
  ``max_restarts`` restarts within ``window_s`` escalates as
  ``RestartBudgetExhausted``. Escalation cancels the ``async with`` body, stops the
  remaining children in order and raises ``ActorFailed`` (cause: the child's error)
  from the block -- never wrapped in an ExceptionGroup.
* Exceptions raised by the body itself leave the block unchanged (not wrapped).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

import anyio
import anyio.abc
import attrs

from mvm.engine.base.errors import (
    ActorFailed,
    ConfigError,
    ConflictError,
    MvmError,
    RestartBudgetExhausted,
    error_leaves,
    unwrap,
)
from mvm.engine.base.log import get_logger
from mvm.engine.runtime.actor import Actor
from mvm.engine.runtime.events import Event, EventBus, EventKind

log = get_logger("mvm.supervisor")

PolicyKind = Literal["never", "on-failure", "always"]
_KINDS = ("never", "on-failure", "always")


def _must(ok: Callable[[Any], bool], rule: str) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not ok(value):
            raise ConfigError(
                f"invalid restart policy: {attribute.name}={value!r} ({rule})",
                code="E_RESTART_POLICY",
            )

    return check


@attrs.frozen
class RestartPolicy:
    kind: PolicyKind = attrs.field(
        default="on-failure",
        validator=_must(
            lambda v: v in ("never", "on-failure", "always"), "never|on-failure|always"
        ),
    )
    max_restarts: int = attrs.field(default=3, validator=_must(lambda v: v >= 0, ">= 0"))
    window_s: float = attrs.field(default=60.0, validator=_must(lambda v: v > 0, "> 0"))
    backoff_initial_s: float = attrs.field(default=0.05, validator=_must(lambda v: v >= 0, ">= 0"))
    backoff_max_s: float = attrs.field(default=5.0, validator=_must(lambda v: v >= 0, ">= 0"))
    backoff_factor: float = attrs.field(default=2.0, validator=_must(lambda v: v >= 1, ">= 1"))

    def backoff(self, recent_restarts: int) -> float:
        """Delay before the next restart, given how many restarts are in the window."""
        if self.backoff_initial_s == 0:
            return 0.0
        exponent = min(recent_restarts, 64)  # keeps factor**n finite
        return min(self.backoff_max_s, self.backoff_initial_s * self.backoff_factor**exponent)


def _is_cancellation(exc: BaseException) -> bool:
    cancelled = anyio.get_cancelled_exc_class()
    return all(isinstance(leaf, cancelled) for leaf in error_leaves(exc))


def _error_data(exc: BaseException) -> dict[str, Any]:
    return {
        "error": repr(exc),
        "code": exc.code if isinstance(exc, MvmError) else None,
    }


class _StartSignal:
    """The ``task_status`` handed to ``Actor.run``."""

    __slots__ = ("_on_started", "_used")

    def __init__(self, on_started: Any) -> None:
        self._on_started = on_started
        self._used = False

    def started(self, value: None = None) -> None:
        if self._used:
            raise RuntimeError("task_status.started() called twice")
        self._used = True
        self._on_started()


@attrs.define(eq=False)
class _Child:
    actor: Actor[Any]
    policy: RestartPolicy
    attempt: int = 0
    registered: bool = False
    stopping: bool = False
    start_error: BaseException | None = None
    scope: anyio.CancelScope | None = None
    restarts: deque[float] = attrs.field(factory=deque)
    first_outcome: anyio.Event = attrs.field(factory=anyio.Event)
    turn: anyio.Event = attrs.field(factory=anyio.Event)
    done: anyio.Event = attrs.field(factory=anyio.Event)

    @property
    def name(self) -> str:
        return self.actor.name


class Supervisor:
    def __init__(self, name: str, *, events: EventBus | None = None) -> None:
        self.name = name
        self._events = events
        self._tg: anyio.abc.TaskGroup | None = None
        self._host_scope: anyio.CancelScope | None = None
        # Keyed by actor name, in insertion order: lookups stay O(1) with a thousand
        # VMs under one engine, and the last entry is the newest.
        self._children: dict[str, _Child] = {}  # registered (started) children
        self._starting: dict[str, _Child] = {}  # started, not yet ready
        self._pending: dict[str, _Child] = {}  # every child whose task has not finished
        self._closing = False
        self._escalation: ActorFailed | None = None

    # -- public API ------------------------------------------------------------------------------

    @property
    def children(self) -> list[str]:
        """Names of the running children, in start order."""
        return list(self._children)

    async def __aenter__(self) -> Supervisor:
        if self._tg is not None:
            raise RuntimeError(f"supervisor {self.name} can only be entered once")
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        # The body runs in its own scope so escalation can cancel it without
        # cancelling the children (they must stop one by one, in order).
        self._host_scope = anyio.CancelScope()
        self._host_scope.__enter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._tg is not None and self._host_scope is not None
        self._closing = True
        if self._host_scope.__exit__(exc_type, exc, tb):
            exc_type, exc, tb = None, None, None  # only our escalation cancels it
        with anyio.CancelScope(shield=True):
            while self._pending:
                await self._stop_child(self._last_pending())
        try:
            await self._tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            if exc is not None and error_leaves(group) == [exc]:
                return False  # re-raise the body's own exception, unwrapped
            raise
        if self._escalation is not None and (exc is None or _is_cancellation(exc)):
            escalation, self._escalation = self._escalation, None
            raise escalation
        return False

    async def start(self, actor: Actor[Any], *, policy: RestartPolicy | None = None) -> None:
        """Run ``actor`` as a child; return once it is ready (see module docstring)."""
        if self._tg is None or self._closing:
            raise MvmError(
                f"supervisor {self.name} is not running; cannot start {actor.name}",
                code="E_SUPERVISOR_CLOSED",
            )
        if actor.name in self._pending:
            raise ConflictError(
                f"supervisor {self.name} already runs an actor named {actor.name!r}",
                code="E_ACTOR_NAME_TAKEN",
            )
        child = _Child(actor, policy or RestartPolicy())
        self._pending[child.name] = self._starting[child.name] = child
        self._tg.start_soon(self._supervise, child, name=f"actor:{actor.name}")
        try:
            await child.first_outcome.wait()
        except BaseException:
            await self._stop_child(child)
            raise
        if child.start_error is not None:
            raise child.start_error

    async def stop(self, name: str) -> bool:
        """Stop one child and wait for its teardown; False if no such child is running."""
        child = self._pending.get(name)
        if child is None:
            return False
        await self._stop_child(child)
        return True

    # -- child lifecycle ---------------------------------------------------------------------------

    def _last_pending(self) -> _Child:
        # Registered children in reverse start order first; children still starting
        # (not yet in _children) are stopped before them, being the newest.
        newest = self._starting or self._children
        return newest[next(reversed(newest))]

    async def _stop_child(self, child: _Child) -> None:
        with anyio.CancelScope(shield=True):
            child.stopping = True
            if child.scope is not None:
                child.scope.cancel()
            child.turn.set()
            await child.done.wait()

    def _forget(self, child: _Child) -> None:
        for table in (self._children, self._starting, self._pending):
            if table.get(child.name) is child:
                del table[child.name]

    def _on_started(self, child: _Child) -> None:
        if not child.registered:
            child.registered = True
            self._children[child.name] = child
            self._starting.pop(child.name, None)
            child.first_outcome.set()
        self._publish(EventKind.ACTOR_STARTED, child, attempt=child.attempt)

    async def _supervise(self, child: _Child) -> None:
        try:
            await self._lifecycle(child)
        except BaseException as exc:
            # The task ends here either way. Re-raising the parent's cancellation
            # would only make trio wrap it (with the body's own exception) into an
            # ExceptionGroup; the cancelled scope is still cancelled for everyone else.
            if not _is_cancellation(exc):
                raise
        finally:
            self._forget(child)
            child.actor._close_inbox()
            child.first_outcome.set()
            child.done.set()

    async def _lifecycle(self, child: _Child) -> None:
        policy = child.policy
        while True:
            child.actor._open_inbox()
            child.attempt += 1
            failure, interrupt = await self._run_once(child)

            if not child.registered:
                if failure is None and interrupt is None and not child.stopping:
                    self._on_started(child)  # returned without started(): started + ended
                else:
                    await self._teardown(child)
                    if failure is not None:
                        child.start_error = failure
                        self._publish(
                            EventKind.ACTOR_FAILED,
                            child,
                            attempt=child.attempt,
                            before_started=True,
                            **_error_data(failure),
                        )
                    child.first_outcome.set()
                    if interrupt is not None:
                        raise interrupt
                    return

            if interrupt is not None and not _is_cancellation(interrupt):
                await self._teardown(child)  # KeyboardInterrupt & co: nobody will give a turn
                self._forget(child)
                raise interrupt

            if child.stopping or interrupt is not None:
                if failure is not None:
                    self._publish(
                        EventKind.ACTOR_FAILED,
                        child,
                        attempt=child.attempt,
                        while_stopping=True,
                        **_error_data(failure),
                    )
                with anyio.CancelScope(shield=True):
                    await child.turn.wait()
                    await self._teardown(child)
                self._forget(child)
                self._publish(EventKind.ACTOR_STOPPED, child, reason="stopped")
                if interrupt is not None:
                    raise interrupt
                return

            await self._teardown(child)
            if failure is not None:
                self._publish(
                    EventKind.ACTOR_FAILED, child, attempt=child.attempt, **_error_data(failure)
                )
                if policy.kind == "never":
                    self._forget(child)
                    self._escalate(
                        child,
                        ActorFailed(
                            f"actor {child.name} failed: {failure!r}",
                            hint=f"supervisor {self.name}, restart policy 'never'",
                        ),
                        failure,
                    )
                    return
            elif policy.kind != "always":
                self._forget(child)
                self._publish(EventKind.ACTOR_STOPPED, child, reason="returned")
                return

            now = anyio.current_time()
            while child.restarts and child.restarts[0] <= now - policy.window_s:
                child.restarts.popleft()
            if len(child.restarts) >= policy.max_restarts:
                self._forget(child)
                self._escalate(
                    child,
                    RestartBudgetExhausted(
                        f"actor {child.name} needed more than {policy.max_restarts} restarts "
                        f"within {policy.window_s:g}s; last: "
                        + (repr(failure) if failure is not None else "returned"),
                        hint=f"supervisor {self.name} gave up on it",
                    ),
                    failure,
                )
                return
            delay = policy.backoff(len(child.restarts))
            child.restarts.append(now)
            self._publish(EventKind.ACTOR_RESTARTING, child, attempt=child.attempt + 1, delay=delay)
            if child.stopping:
                return
            child.scope = anyio.CancelScope()
            with child.scope:
                await anyio.sleep(delay)
            if child.stopping:
                self._forget(child)
                self._publish(EventKind.ACTOR_STOPPED, child, reason="stopped")
                return

    async def _run_once(self, child: _Child) -> tuple[BaseException | None, BaseException | None]:
        """One ``run()``: (failure, interrupt). An interrupt is a cancellation from
        outside this child (or KeyboardInterrupt & co) that must propagate."""
        scope = anyio.CancelScope()
        child.scope = scope
        if child.stopping:
            scope.cancel()
        try:
            with scope:
                await child.actor.run(task_status=_StartSignal(lambda: self._on_started(child)))
        except BaseException as exc:
            if _is_cancellation(exc):
                return None, exc
            if isinstance(exc, Exception | BaseExceptionGroup):
                return unwrap(exc), None
            return None, exc
        return None, None

    async def _teardown(self, child: _Child) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await child.actor.teardown()
            except Exception as exc:  # one broken teardown must not skip the others
                log.error(
                    "actor.teardown_failed", actor=child.name, supervisor=self.name, exc_info=exc
                )
                self._publish(EventKind.ACTOR_TEARDOWN_FAILED, child, **_error_data(exc))

    def _escalate(self, child: _Child, error: ActorFailed, cause: BaseException | None) -> None:
        error.__cause__ = cause
        self._publish_raw(
            Event(
                kind=EventKind.SUPERVISOR_ESCALATED,
                source=self.name,
                data={"child": child.name, **_error_data(error)},
            )
        )
        if self._escalation is None:
            self._escalation = error
        else:
            log.error(
                "supervisor.escalation_dropped",
                supervisor=self.name,
                child=child.name,
                error=repr(error),
            )
        assert self._host_scope is not None
        self._host_scope.cancel()

    # -- events --------------------------------------------------------------------------------

    def _publish(self, kind: str, child: _Child, **data: Any) -> None:
        vm = getattr(child.actor, "vm", None)
        self._publish_raw(
            Event(
                kind=kind,
                source=child.name,
                vm=vm if isinstance(vm, str) else None,
                data={"supervisor": self.name, **data},
            )
        )

    def _publish_raw(self, event: Event) -> None:
        if self._events is not None:
            self._events.publish(event)
        else:
            log.debug(event.kind, source=event.source, **event.data)
