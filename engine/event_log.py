"""The engine's events, persisted: what one process's bus publishes, every process reads.

An :class:`~mvm.engine.runtime.events.EventBus` lives in one process (the CLI's ``run``,
a detached VM's shim, an embedding app), so its subscribers only ever see the VMs that
process supervises. :func:`record_events` copies every event the bus publishes into the
state store's ``events`` table, in batches (one transaction per burst: a boot publishes
~40 events in a few milliseconds), so ``mvmctl events`` -- or any reader following
``StateStore.list_events(after=...)`` -- sees the events of every VM, whichever process
supervises it (a stop done by another process included).

Writing never blocks the publisher (the bus hands events over without waiting) and a
failing write only logs: losing the persisted copy of an event must not stop a VM.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from mvm.engine.base.errors import MvmError
from mvm.engine.base.log import get_logger
from mvm.engine.runtime.events import DROPPED, Event, EventBus, EventKind, Subscription
from mvm.engine.store import StateStore

log = get_logger("mvm.event_log")

# The table keeps the newest KEEP events; pruned every PRUNE_EVERY written. The
# ``vm.removed`` tombstones (one per removed VM, what ``mvmctl wait`` reads) are spared.
KEEP = 20_000
PRUNE_EVERY = 1_000
_BUFFER = 10_000


async def _write(store: StateStore, batch: list[Event]) -> None:
    rows = [(e.kind, e.source, e.vm, e.data, e.ts) for e in batch if e.kind != DROPPED]
    with anyio.CancelScope(shield=True):
        try:
            await store.append_events(rows)
        except (MvmError, sqlite3.Error, OSError) as exc:
            log.warning("events.persist_failed", count=len(rows), error=repr(exc))


async def _drain(sub: Subscription, store: StateStore, written: list[int]) -> None:
    """Write the first event that arrives together with every one buffered behind it."""
    async for event in sub:
        batch = [event, *sub.pending()]
        await _write(store, batch)
        written[0] += len(batch)
        if written[0] >= PRUNE_EVERY:
            written[0] = 0
            with anyio.CancelScope(shield=True):
                try:
                    await store.prune_events(KEEP, spare=EventKind.VM_REMOVED)
                except (MvmError, sqlite3.Error, OSError) as exc:
                    log.warning("events.prune_failed", error=repr(exc))


@asynccontextmanager
async def record_events(bus: EventBus, store: StateStore) -> AsyncIterator[None]:
    """Persist ``bus``'s events into ``store`` while the block runs; on leaving it,
    what was published up to then (the teardown's ``vm.stopped`` included) is written."""
    async with bus.subscribe(maxsize=_BUFFER) as events:
        assert isinstance(events, Subscription)
        written = [0]
        # The block's own exception leaves unwrapped: raised inside the task group it
        # would reach the caller as an ExceptionGroup (``Engine.open`` would change how
        # every error inside ``async with`` looks).
        raised: BaseException | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(_drain, events, store, written)
            try:
                yield
            except BaseException as exc:
                raised = exc
            finally:
                tg.cancel_scope.cancel()
        await _write(store, events.pending())
        if raised is not None:
            raise raised
