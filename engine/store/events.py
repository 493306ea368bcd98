"""StateStore methods for the ``events`` table: the lifecycle event log.

A mixin rather than part of StateStore because the log is append-and-tail
(ids only grow, readers follow with ``after=``, old entries are pruned) and is
not tied to the VM rows (no foreign key: events outlive their VM); keeping it out leaves
``store.py`` about the connection, transactions and VMs. It relies on
StateStore's ``_read``/``_write``, so every write is still one
``BEGIN IMMEDIATE`` transaction in one worker-thread hop.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from mvm.engine.store.records import EventRecord, VmRecord

T = TypeVar("T")

# The event a removed VM row leaves behind: its last state and exit status. A row is
# removed by ``down``, ``cleanup`` or a new VM claiming an exited one's name, and a
# ``mvmctl wait`` that was waiting on it must still learn how it ended (docker's
# ``wait`` answers the exit status when ``stop`` ends a container, not "no such VM").
REMOVED = "vm.removed"


def record_removal(conn: sqlite3.Connection, rec: VmRecord) -> None:
    """Append ``vm.removed`` for ``rec`` inside the caller's (deleting) transaction, so
    no reader ever sees the row gone without its tombstone."""
    body = {
        "state": rec.state,
        "exit_code": rec.exit_code,
        "exit_reason": rec.exit_reason,
        "created_at": rec.created_at,
        "exited_at": rec.exited_at,
    }
    conn.execute(
        "INSERT INTO events (ts, kind, source, vm, data) VALUES (?, ?, ?, ?, ?)",
        (time.time(), REMOVED, "store", rec.name, json.dumps(body, sort_keys=True)),
    )


class EventsMixin:
    """Event log rows; mixed into StateStore, which provides ``_read``/``_write``."""

    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

    async def append_event(
        self,
        event_kind: str,
        source: str,
        vm: str | None,
        data: Mapping[str, Any] | None = None,
        *,
        ts: float | None = None,
    ) -> int:
        """Record one event; return its id (ids increase, so ``after=`` can tail).

        Values JSON cannot hold (paths, enums) are stored as their ``str()``."""
        body = json.dumps(dict(data or {}), sort_keys=True, default=str)
        when = time.time() if ts is None else ts
        event_id = await self._write(
            lambda c: (
                c.execute(
                    "INSERT INTO events (ts, kind, source, vm, data) VALUES (?, ?, ?, ?, ?)",
                    (when, event_kind, source, vm, body),
                ).lastrowid
            )
        )
        assert event_id is not None
        return event_id

    async def append_events(
        self, events: Sequence[tuple[str, str, str | None, Mapping[str, Any], float]]
    ) -> None:
        """Record ``(kind, source, vm, data, ts)`` rows in one transaction: an engine's
        event recorder (engine/event_log.py) writes what its bus published in batches."""
        rows = [
            (ts, str(kind), source, vm, json.dumps(dict(data), sort_keys=True, default=str))
            for kind, source, vm, data, ts in events
        ]
        if rows:
            await self._write(
                lambda c: c.executemany(
                    "INSERT INTO events (ts, kind, source, vm, data) VALUES (?, ?, ?, ?, ?)", rows
                )
            )

    async def list_events(
        self,
        vm: str | None = None,
        limit: int = 100,
        *,
        after: int | None = None,
        since: float | None = None,
        oldest: bool = False,
    ) -> list[EventRecord]:
        """The newest ``limit`` events (of ``vm``, if given; with id above ``after``; at
        or after wall-clock ``since``), oldest first; with ``oldest``, the oldest
        ``limit`` of them instead (a follower paging through a burst loses none)."""
        where: list[str] = []
        params: list[Any] = []
        if vm is not None:
            where.append("vm = ?")
            params.append(vm)
        if after is not None:
            where.append("id > ?")
            params.append(after)
        if since is not None:
            where.append("ts >= ?")
            params.append(since)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        order = "ASC" if oldest else "DESC"
        sql = (
            f"SELECT id, ts, kind, source, vm, data FROM events {clause} "
            f"ORDER BY id {order} LIMIT ?"
        )
        rows = await self._read(lambda c: c.execute(sql, (*params, limit)).fetchall())
        return [
            EventRecord(id=r[0], ts=r[1], kind=r[2], source=r[3], vm=r[4], data=json.loads(r[5]))
            for r in (rows if oldest else reversed(rows))
        ]

    async def last_removal(self, vm: str, created_at: float) -> EventRecord | None:
        """The tombstone of the row of ``vm`` created at ``created_at`` (one incarnation
        of the name: a later VM of the same name has another), or None."""
        rows = await self._read(
            lambda c: c.execute(
                "SELECT id, ts, kind, source, vm, data FROM events "
                "WHERE kind = ? AND vm = ? ORDER BY id DESC LIMIT 20",
                (REMOVED, vm),
            ).fetchall()
        )
        for r in rows:
            data = json.loads(r[5])
            if data.get("created_at") == created_at:
                return EventRecord(id=r[0], ts=r[1], kind=r[2], source=r[3], vm=r[4], data=data)
        return None

    async def prune_events(self, keep: int, *, spare: str | None = None) -> int:
        """Delete all but the newest ``keep`` events (events of kind ``spare`` are kept
        and not counted); return how many went."""
        params: tuple[str | int, ...]
        if spare is None:
            sql, params = (
                "DELETE FROM events WHERE id NOT IN "
                "(SELECT id FROM events ORDER BY id DESC LIMIT ?)",
                (keep,),
            )
        else:
            sql, params = (
                "DELETE FROM events WHERE kind != ? AND id NOT IN "
                "(SELECT id FROM events WHERE kind != ? ORDER BY id DESC LIMIT ?)",
                (spare, spare, keep),
            )
        return await self._write(lambda c: c.execute(sql, params).rowcount)
