"""Actors: a typed inbox plus a ``run()`` that lives in its supervisor's task group.

An actor never starts itself; a :class:`~mvm.engine.runtime.supervisor.Supervisor` runs it,
calls :meth:`Actor.teardown` exactly once per run attempt (shielded) and may call
``run()`` again on the same object after a failure. The inbox therefore belongs to
the object, not to one run: messages queued while the actor restarts are kept.

Requests that need an answer carry a :class:`Reply`; :func:`ask` sends one and
waits for the answer with a deadline, so a stuck or dead actor surfaces as a coded
``RequestTimeout`` / ``ActorStopped`` instead of a hang.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import anyio
import anyio.abc
import attrs
from anyio.streams.memory import (
    MemoryObjectReceiveStream,
    MemoryObjectSendStream,
    MemoryObjectStreamStatistics,
)

from mvm.engine.base.errors import ActorStopped, ConfigError, RequestTimeout

M = TypeVar("M")
R = TypeVar("R")


class Reply(Generic[R]):
    """One-shot answer channel carried inside a request message.

    ``send``/``fail`` never block (the buffer holds the single answer) so an actor
    can answer from anywhere, including sync code. They return False when the
    asker is gone (timed out) or the request was already answered: a late answer
    is not an error for the answering actor.
    """

    __slots__ = ("_done", "_recv", "_send")

    def __init__(self) -> None:
        self._done = False
        self._send: MemoryObjectSendStream[tuple[bool, Any]]
        self._recv: MemoryObjectReceiveStream[tuple[bool, Any]]
        self._send, self._recv = anyio.create_memory_object_stream[tuple[bool, Any]](1)

    def send(self, value: R) -> bool:
        return self._put((True, value))

    def fail(self, exc: BaseException) -> bool:
        """Make the asker's ``ask`` raise ``exc`` (use an MvmError so it has a code)."""
        return self._put((False, exc))

    @property
    def answered(self) -> bool:
        return self._done

    def _put(self, outcome: tuple[bool, Any]) -> bool:
        if self._done:
            return False
        self._done = True
        try:
            self._send.send_nowait(outcome)
        except (anyio.WouldBlock, anyio.ClosedResourceError, anyio.BrokenResourceError):
            return False
        finally:
            self._send.close()
        return True

    async def wait(self) -> R:
        """The answer, or the exception passed to ``fail``."""
        try:
            ok, value = await self._recv.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise ActorStopped("the actor ended without answering the request") from None
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def close(self) -> None:
        self._done = True
        self._send.close()
        self._recv.close()

    def __repr__(self) -> str:
        return f"<Reply answered={self.answered}>"


ReplyChannel = Reply


class Actor(abc.ABC, Generic[M]):
    """Base of every actor. Subclasses implement ``run`` and, if they hold resources,
    ``teardown``.

    ``run`` calls ``task_status.started()`` once it is ready to serve; until then
    its supervisor's ``start()`` waits, and a failure before that point is raised
    from ``start()`` itself. A ``run`` that returns without calling it counts as
    started and ended.
    """

    def __init__(self, name: str, *, inbox_size: int = 64) -> None:
        if not name:
            raise ConfigError("an actor needs a non-empty name", code="E_ACTOR_NAME")
        if inbox_size < 0:
            raise ConfigError(f"inbox_size must be >= 0, not {inbox_size}", code="E_ACTOR_INBOX")
        self.name = name
        self._inbox_size: float = math.inf if inbox_size == 0 else inbox_size
        self._inbox_send: MemoryObjectSendStream[M] | None = None
        self._inbox_recv: MemoryObjectReceiveStream[M] | None = None

    # -- inbox ---------------------------------------------------------------------------------

    @property
    def inbox(self) -> MemoryObjectReceiveStream[M]:
        """Receive side of the inbox; ``async for msg in self.inbox`` in ``run``."""
        return self._open_inbox()[1]

    async def send(self, msg: M) -> None:
        """Queue ``msg``, waiting while the inbox is full.

        Raises ``anyio.ClosedResourceError`` / ``anyio.BrokenResourceError`` once the
        actor has ended for good (its supervisor closed the inbox).
        """
        send = self._inbox_send
        if send is None:
            send = self._open_inbox()[0]
        await send.send(msg)

    def send_nowait(self, msg: M) -> None:
        """Queue ``msg`` or raise ``anyio.WouldBlock`` when the inbox is full."""
        send = self._inbox_send
        if send is None:
            send = self._open_inbox()[0]
        send.send_nowait(msg)

    def _open_inbox(
        self,
    ) -> tuple[MemoryObjectSendStream[M], MemoryObjectReceiveStream[M]]:
        """The inbox, created lazily and re-created only if a previous end closed it."""
        send, recv = self._inbox_send, self._inbox_recv
        if send is None or recv is None or _is_closed(send.statistics()):
            send, recv = anyio.create_memory_object_stream[M](self._inbox_size)
            self._inbox_send, self._inbox_recv = send, recv
        return send, recv

    def _close_inbox(self) -> None:
        """Close the inbox for good and fail every queued request's reply.

        Called by the supervisor when the actor ends without restart, so callers
        blocked in ``ask`` learn at once (``ActorStopped``) instead of timing out.
        """
        send, recv = self._inbox_send, self._inbox_recv
        if send is None or recv is None:
            return
        send.close()
        while True:
            try:
                msg = recv.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            for reply in _replies_in(msg):
                reply.fail(ActorStopped(f"actor {self.name} ended before handling the request"))
        recv.close()

    # -- lifecycle -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def run(
        self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The actor's whole life; may be called again after a restart."""

    async def teardown(self) -> None:
        """Release what ``run`` acquired. Runs shielded, exactly once per run attempt,
        after ``run`` returned, raised or was cancelled."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _is_closed(stats: MemoryObjectStreamStatistics) -> bool:
    return stats.open_send_streams == 0 or stats.open_receive_streams == 0


def _replies_in(msg: object) -> list[Reply[Any]]:
    if isinstance(msg, Reply):
        return [msg]
    cls = type(msg)
    if attrs.has(cls):
        return [
            value
            for field in attrs.fields(cls)
            if isinstance(value := getattr(msg, field.name, None), Reply)
        ]
    return []


async def ask(actor: Actor[M], make_msg: Callable[[Reply[R]], M], *, timeout: float) -> R:
    """Send a request built around a fresh reply channel and wait for its answer.

    Raises ``RequestTimeout`` when nothing answers within ``timeout`` seconds
    (queueing into a full inbox counts), ``ActorStopped`` when the actor has ended,
    or whatever exception the actor passed to ``Reply.fail``.
    """
    reply: Reply[R] = Reply()
    msg = make_msg(reply)
    try:
        with anyio.move_on_after(timeout):
            try:
                await actor.send(msg)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                raise ActorStopped(
                    f"actor {actor.name} has ended; cannot deliver {type(msg).__name__}"
                ) from None
            return await reply.wait()
    finally:
        reply.close()
    raise RequestTimeout(
        f"actor {actor.name} did not answer {type(msg).__name__} within {timeout:g}s",
        hint="the actor is stuck, overloaded or not handling this message type",
    )
