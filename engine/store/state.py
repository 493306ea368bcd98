"""The engine's state store: one SQLite database under ``$MVM_HOME``.

It records VMs (pid + start time, sockets, mode, exit status), their port
forwards, image builds and lifecycle events, and it is shared by every process
of one user: engines, ``mvmctl`` invocations and detached shims. That sharing
decides the design:

* WAL mode and a busy timeout, so readers never block the one writer and a
  writer waits its turn instead of failing at once.
* Every write is one ``BEGIN IMMEDIATE`` transaction. Taking the write lock at
  ``BEGIN`` (not at the first write) means a read-then-write inside a transaction
  cannot be overtaken by another process, and the primary key settles name races
  across processes: exactly one insert wins, the others get ``E_NAME_TAKEN``.
* Commit and rollback run shielded from cancellation, so Ctrl-C or a cancelled
  task group never leaves a transaction (and the write lock) open.

Why not aiosqlite: it resolves its results through asyncio futures and fails
under trio ("trio.run received unrecognized yield message <Future pending>"),
while the engine must embed in both. The same design (one connection, blocking
calls on a worker thread) is done here through ``anyio.to_thread``, serialised by
an ``anyio.Lock`` so statements of concurrent tasks never interleave.

Layout: this module keeps the connection, transactions and the VM and port
tables (the rows whose writes race across processes). Records and their checks
are in ``records``, error mapping in ``sqlite_errors``, opening the file in
``connection``, and the build cache and event log tables in the ``builds`` /
``events`` mixins. Importers use the package, ``mvm.engine.store``, which exports
the records and this module's store.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import attrs

from mvm.engine.base import paths
from mvm.engine.base.errors import ConflictError, NotFoundError
from mvm.engine.base.log import get_logger
from mvm.engine.store.builds import BuildsMixin
from mvm.engine.store.connection import open_connection
from mvm.engine.store.events import EventsMixin, record_removal
from mvm.engine.store.records import (
    VM_COLUMNS,
    PortRecord,
    VmRecord,
    check_ports,
    check_vm_values,
    port_rows,
    vm_from_row,
    vm_params,
)
from mvm.engine.store.sqlite_errors import is_pk_violation, name_taken, port_conflict, state_error

__all__ = ["BUSY_TIMEOUT_S", "StateStore", "Transaction"]

log = get_logger("mvm.store")

T = TypeVar("T")

# Read at each use (open, error mapping), so tests can shorten it by patching
# mvm.engine.store.BUSY_TIMEOUT_S.
BUSY_TIMEOUT_S = 5.0

_UPDATABLE = frozenset(VM_COLUMNS) - {"name"}
_VM_SELECT = f"SELECT {', '.join(VM_COLUMNS)} FROM vms"
_VM_INSERT = (
    f"INSERT INTO vms ({', '.join(VM_COLUMNS)}) VALUES ({', '.join('?' * len(VM_COLUMNS))})"
)
_PORT_INSERT = "INSERT INTO ports (vm, host_addr, host_port, guest_port) VALUES (?, ?, ?, ?)"


class Transaction:
    """Statements inside one ``BEGIN IMMEDIATE`` ... ``COMMIT``; see StateStore.transaction."""

    def __init__(self, store: StateStore) -> None:
        self._store = store

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Run one statement; return its rows (empty for writes)."""
        return await self._store._call(lambda c: c.execute(sql, params).fetchall())

    async def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> int:
        """Run one statement per row; return the number of rows changed."""
        batch = list(rows)
        return await self._store._call(lambda c: c.executemany(sql, batch).rowcount)

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run several statements in one hop to the worker thread."""
        return await self._store._call(fn)


class StateStore(BuildsMixin, EventsMixin):
    """Async access to the state database; open with ``async with StateStore.open()``.

    Not re-entrant: calling a store method from inside ``transaction()`` of the
    same store raises (anyio's Lock refuses a second acquire by its owner)
    instead of deadlocking.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._lock = anyio.Lock()

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path | None = None) -> AsyncIterator[StateStore]:
        """Open (creating and migrating as needed) the database at ``path``,
        default ``$MVM_HOME/state.db``. Raises StateError E_DB_NEWER / E_DB_CORRUPT."""
        db = path if path is not None else paths.db_path()
        conn = await anyio.to_thread.run_sync(open_connection, db, BUSY_TIMEOUT_S)
        store = cls(conn, db)
        try:
            yield store
        finally:
            with anyio.CancelScope(shield=True):
                async with store._lock:
                    await anyio.to_thread.run_sync(conn.close)

    # -- plumbing ------------------------------------------------------------------------------

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` on a worker thread; the caller holds ``self._lock``.

        The thread call is not abandoned on cancellation: a statement that has
        started finishes, and the cancellation lands at the next checkpoint."""
        try:
            return await anyio.to_thread.run_sync(fn, self._conn)
        except sqlite3.DatabaseError as exc:
            mapped = state_error(self.path, exc, BUSY_TIMEOUT_S)
            if mapped is None:
                raise
            raise mapped from exc

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        async with self._lock:
            return await self._call(fn)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """One write transaction: ``BEGIN IMMEDIATE``, the body, ``COMMIT``.

        Any exception (cancellation included) rolls back; commit and rollback are
        shielded so they always run to completion. BEGIN IMMEDIATE waits up to
        the busy timeout for another process's write, then raises E_DB_LOCKED."""
        async with self._lock:
            try:
                await self._call(lambda c: c.execute("BEGIN IMMEDIATE"))
                yield Transaction(self)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._finish("ROLLBACK")
                raise
            with anyio.CancelScope(shield=True):
                try:
                    await self._call(lambda c: c.execute("COMMIT"))
                except BaseException:
                    await self._finish("ROLLBACK")
                    raise

    async def _finish(self, statement: str) -> None:
        def finish(conn: sqlite3.Connection) -> None:
            if conn.in_transaction:
                conn.execute(statement)

        try:
            await anyio.to_thread.run_sync(finish, self._conn)
        except sqlite3.Error as exc:  # the original error matters more; SQLite rolled back
            log.error("store.rollback_failed", path=str(self.path), error=str(exc))

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn`` in one write transaction, BEGIN to COMMIT in a single worker-thread hop.

        A thread call runs to completion even if the caller is cancelled, so the
        transaction is never left open across an await, and one hop instead of three
        (BEGIN, body, COMMIT) saves two thread round-trips per state change."""

        def atomic(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # the original error matters more
                        conn.execute("ROLLBACK")
                raise
            return result

        async with self._lock:
            return await self._call(atomic)

    # -- VMs -----------------------------------------------------------------------------------

    async def insert_vm(self, rec: VmRecord, ports: Sequence[PortRecord] = ()) -> None:
        """Claim ``rec.name`` (and record its ports in the same transaction).

        Raises ConflictError E_NAME_TAKEN if the name exists, also when another
        process inserted it a moment ago: the primary key decides, not a prior read."""
        check_vm_values(attrs.asdict(rec))
        check_ports(rec.name, ports)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(_VM_INSERT, vm_params(rec))
            conn.executemany(_PORT_INSERT, port_rows(ports))

        try:
            await self._write(insert)
        except sqlite3.IntegrityError as exc:
            if is_pk_violation(exc) and "vms." in str(exc):
                raise name_taken(rec.name) from exc
            raise port_conflict(rec.name, exc) from exc

    async def claim_vm(self, rec: VmRecord, ports: Sequence[PortRecord] = ()) -> VmRecord | None:
        """Like insert_vm, but a finished VM (exited/failed) of that name is replaced.

        Check and replace happen in one transaction: done as get + delete + insert
        from outside, two engines could both see the old row finished and the
        second would delete the first one's fresh claim. Returns the replaced row."""
        check_vm_values(attrs.asdict(rec))
        check_ports(rec.name, ports)

        def claim(conn: sqlite3.Connection) -> VmRecord | None:
            row = conn.execute(f"{_VM_SELECT} WHERE name = ?", (rec.name,)).fetchone()
            old = vm_from_row(row) if row is not None else None
            if old is not None:
                if old.state not in ("exited", "failed"):
                    raise ConflictError(
                        f"a VM named {rec.name!r} already exists ({old.state})",
                        code="E_NAME_TAKEN",
                        hint=f"pick another --name or run: mvmctl down {rec.name}",
                    )
                conn.execute("DELETE FROM ports WHERE vm = ?", (rec.name,))
                conn.execute("DELETE FROM vms WHERE name = ?", (rec.name,))
                record_removal(conn, old)
            conn.execute(_VM_INSERT, vm_params(rec))
            conn.executemany(_PORT_INSERT, port_rows(ports))
            return old

        try:
            return await self._write(claim)
        except sqlite3.IntegrityError as exc:
            raise port_conflict(rec.name, exc) from exc

    async def compare_and_set_owner(
        self, name: str, expected: str | None, owner: str | None
    ) -> bool:
        """Set ``owner`` only if it is still ``expected`` (one transaction): when two
        engines race to adopt an unsupervised VM, exactly one of them wins."""

        def swap(conn: sqlite3.Connection) -> int:
            cursor = conn.execute(
                "UPDATE vms SET owner = ? WHERE name = ? AND owner IS ?",
                (owner, name, expected),
            )
            return int(cursor.rowcount)

        return await self._write(swap) == 1

    async def update_vm(self, name: str, /, **fields: Any) -> bool:
        """Set columns of one VM; return False if there is no such VM.

        Only VmRecord field names are accepted (ValueError otherwise); ``name``
        is the key and cannot change."""
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"update_vm: unknown or read-only fields {sorted(unknown)}")
        check_vm_values(fields)
        if not fields:
            return await self.get_vm(name) is not None
        values = [int(v) if k == "sealed" else v for k, v in fields.items()]
        sql = f"UPDATE vms SET {', '.join(f'{k} = ?' for k in fields)} WHERE name = ?"
        changed = await self._write(lambda c: c.execute(sql, (*values, name)).rowcount)
        return changed > 0

    async def get_vm(self, name: str) -> VmRecord | None:
        """VM ``name``'s row, or None."""
        row = await self._read(
            lambda c: c.execute(f"{_VM_SELECT} WHERE name = ?", (name,)).fetchone()
        )
        return vm_from_row(row) if row is not None else None

    async def list_vms(self) -> list[VmRecord]:
        """Every VM row, whichever process owns the VM."""
        rows = await self._read(
            lambda c: c.execute(f"{_VM_SELECT} ORDER BY created_at, name").fetchall()
        )
        return [vm_from_row(r) for r in rows]

    async def delete_vm(self, name: str) -> bool:
        """Remove a VM and its ports; return False if it did not exist. The row's last
        state and exit status stay in the event log (``vm.removed``) for ``wait``."""

        def delete(conn: sqlite3.Connection) -> int:
            row = conn.execute(f"{_VM_SELECT} WHERE name = ?", (name,)).fetchone()
            if row is None:
                return 0
            conn.execute("DELETE FROM ports WHERE vm = ?", (name,))
            conn.execute("DELETE FROM vms WHERE name = ?", (name,))
            record_removal(conn, vm_from_row(row))
            return 1

        return await self._write(delete) > 0

    # -- ports ---------------------------------------------------------------------------------

    async def set_ports(self, vm: str, ports: Sequence[PortRecord]) -> None:
        """Replace all ports of ``vm`` at once: readers see the old set or the new one."""
        check_ports(vm, ports)

        def replace(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM vms WHERE name = ?", (vm,)).fetchone() is None:
                raise NotFoundError(f"no VM named {vm!r}", hint="list VMs with: mvmctl ls")
            conn.execute("DELETE FROM ports WHERE vm = ?", (vm,))
            conn.executemany(_PORT_INSERT, port_rows(ports))

        try:
            await self._write(replace)
        except sqlite3.IntegrityError as exc:
            raise port_conflict(vm, exc) from exc

    async def list_ports(self, vm: str) -> list[PortRecord]:
        """Ports of ``vm`` in the order they were given."""
        rows = await self._read(
            lambda c: c.execute(
                "SELECT vm, host_addr, host_port, guest_port FROM ports "
                "WHERE vm = ? ORDER BY rowid",
                (vm,),
            ).fetchall()
        )
        return [PortRecord(vm=r[0], host_addr=r[1], host_port=r[2], guest_port=r[3]) for r in rows]
