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
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import attrs
import structlog

from mvm.engine import paths
from mvm.engine.errors import ConflictError, NotFoundError, StateError
from mvm.engine.migrations import apply_migrations

log = structlog.get_logger("mvm.store")

T = TypeVar("T")

BUSY_TIMEOUT_S = 5.0
VM_MODES = frozenset({"attached", "detached"})
VM_STATES = frozenset({"starting", "running", "stopping", "exited", "failed"})
BUILD_STATUSES = frozenset({"building", "ready", "failed"})


@attrs.frozen(kw_only=True)
class VmRecord:
    """One row of ``vms``. ``owner`` is ``"<pid>:<start time>"`` of the supervising
    process (engine or shim) or None when nobody supervises the VM."""

    name: str
    backend: str
    mode: str
    state: str
    pid: int | None
    pid_start_time: int | None
    run_dir: str
    image: str
    sealed: bool
    created_at: float
    started_at: float | None
    exited_at: float | None
    exit_code: int | None
    exit_reason: str | None
    control_socket: str | None
    agent_socket: str | None
    console_log: str | None
    spec_json: str
    owner: str | None
    health: str | None = None  # JSON {service: state}, written by RuntimeVM


@attrs.frozen
class PortRecord:
    vm: str
    host_addr: str
    host_port: int
    guest_port: int


@attrs.frozen(kw_only=True)
class BuildRecord:
    key: str
    spec_hash: str
    path: str
    created_at: float
    status: str


@attrs.frozen(kw_only=True)
class EventRecord:
    id: int
    ts: float
    kind: str
    source: str
    vm: str | None
    data: Mapping[str, Any]


VM_COLUMNS: tuple[str, ...] = tuple(a.name for a in attrs.fields(VmRecord))
_UPDATABLE = frozenset(VM_COLUMNS) - {"name"}
_VM_SELECT = f"SELECT {', '.join(VM_COLUMNS)} FROM vms"
_VM_INSERT = (
    f"INSERT INTO vms ({', '.join(VM_COLUMNS)}) VALUES ({', '.join('?' * len(VM_COLUMNS))})"
)
_PORT_INSERT = "INSERT INTO ports (vm, host_addr, host_port, guest_port) VALUES (?, ?, ?, ?)"


def _vm_from_row(row: Sequence[Any]) -> VmRecord:
    values = dict(zip(VM_COLUMNS, row, strict=True))
    values["sealed"] = bool(values["sealed"])
    return VmRecord(**values)


def _vm_params(rec: VmRecord) -> tuple[Any, ...]:
    return tuple(int(rec.sealed) if c == "sealed" else getattr(rec, c) for c in VM_COLUMNS)


def _check_vm_values(fields: Mapping[str, Any]) -> None:
    """Reject bad values before SQL does, with a message naming the field."""
    if "mode" in fields and fields["mode"] not in VM_MODES:
        raise ValueError(f"mode must be one of {sorted(VM_MODES)}, not {fields['mode']!r}")
    if "state" in fields and fields["state"] not in VM_STATES:
        raise ValueError(f"state must be one of {sorted(VM_STATES)}, not {fields['state']!r}")


def _check_ports(vm: str, ports: Sequence[PortRecord]) -> None:
    for p in ports:
        if p.vm != vm:
            raise ValueError(f"port {p} belongs to {p.vm!r}, not {vm!r}")
        if not 0 <= p.host_port <= 65535 or not 1 <= p.guest_port <= 65535:
            raise ValueError(f"port out of range: {p}")


def _port_rows(ports: Iterable[PortRecord]) -> list[tuple[str, str, int, int]]:
    return [(p.vm, p.host_addr, p.host_port, p.guest_port) for p in ports]


def _is_pk_violation(exc: sqlite3.IntegrityError) -> bool:
    return getattr(exc, "sqlite_errorname", "") in (
        "SQLITE_CONSTRAINT_PRIMARYKEY",
        "SQLITE_CONSTRAINT_UNIQUE",
    )


def _name_taken(name: str) -> ConflictError:
    return ConflictError(
        f"a VM named {name!r} already exists",
        code="E_NAME_TAKEN",
        hint=f"pick another --name or run: mvmctl down {name}",
    )


def _corrupt(path: Path, exc: BaseException) -> StateError:
    return StateError(
        f"the state database {path} is not a readable SQLite database ({exc})",
        code="E_DB_CORRUPT",
        hint=f"move it aside (mv {path} {path}.bad) and mvm will start a fresh one; "
        "VMs it recorded will no longer be tracked",
    )


def _state_error(path: Path, exc: sqlite3.DatabaseError) -> StateError | None:
    """Map what SQLite raised to a stable code; None for our own bugs (misuse of the
    API, constraint violations), which callers handle or let surface as they are."""
    text = str(exc)
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return StateError(
            f"the state database {path} stayed locked for more than {BUSY_TIMEOUT_S:g} s",
            code="E_DB_LOCKED",
            hint=f"another mvm process holds a long write; retry, or find it with: fuser {path}",
        )
    if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")) or type(exc) is sqlite3.DatabaseError:
        return _corrupt(path, exc)
    if not isinstance(exc, sqlite3.OperationalError):
        return None
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_READONLY", "SQLITE_PERM")):
        return StateError(
            f"cannot open the state database {path} for writing ({text})",
            code="E_DB_OPEN",
            hint="check the permissions of MVM_HOME, or point MVM_HOME elsewhere",
        )
    return StateError(f"state database {path}: {text}", code="E_DB_IO")


def _enable_wal(conn: sqlite3.Connection) -> None:
    """SQLite does not run its busy handler for a journal mode change, so a second
    process racing the first one to open a fresh file retries here instead."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _make_private_dirs(directory: Path) -> None:
    """Create missing parents 0700: the database names VMs, sockets and pids."""
    missing: list[Path] = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(d, 0o700)  # mkdir's mode is masked by the umask


def _open_sync(path: Path) -> sqlite3.Connection:
    try:
        _make_private_dirs(path.parent)
        os.close(os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        hint = "check the permissions of MVM_HOME, or point MVM_HOME elsewhere"
        if exc.errno == errno.EISDIR:
            hint = f"{path} is a directory; move it aside"
        raise StateError(
            f"cannot create the state database {path}: {exc.strerror}", code="E_DB_OPEN", hint=hint
        ) from exc
    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None,  # we issue BEGIN/COMMIT ourselves
        check_same_thread=False,  # used from anyio worker threads, one at a time
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the header
        _enable_wal(conn)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        apply_migrations(conn, str(path))
    except sqlite3.DatabaseError as exc:
        conn.close()
        mapped = _state_error(path, exc)
        if mapped is None:
            raise
        raise mapped from exc
    except BaseException:
        conn.close()
        raise
    return conn


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


class StateStore:
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
        conn = await anyio.to_thread.run_sync(_open_sync, db)
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
            mapped = _state_error(self.path, exc)
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
        _check_vm_values(attrs.asdict(rec))
        _check_ports(rec.name, ports)

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(_VM_INSERT, _vm_params(rec))
            conn.executemany(_PORT_INSERT, _port_rows(ports))

        try:
            await self._write(insert)
        except sqlite3.IntegrityError as exc:
            if _is_pk_violation(exc) and "vms." in str(exc):
                raise _name_taken(rec.name) from exc
            raise _port_conflict(rec.name, exc) from exc

    async def claim_vm(self, rec: VmRecord, ports: Sequence[PortRecord] = ()) -> VmRecord | None:
        """Like insert_vm, but a finished VM (exited/failed) of that name is replaced.

        Check and replace happen in one transaction: done as get + delete + insert
        from outside, two engines could both see the old row finished and the
        second would delete the first one's fresh claim. Returns the replaced row."""
        _check_vm_values(attrs.asdict(rec))
        _check_ports(rec.name, ports)

        def claim(conn: sqlite3.Connection) -> VmRecord | None:
            row = conn.execute(f"{_VM_SELECT} WHERE name = ?", (rec.name,)).fetchone()
            old = _vm_from_row(row) if row is not None else None
            if old is not None:
                if old.state not in ("exited", "failed"):
                    raise ConflictError(
                        f"a VM named {rec.name!r} already exists ({old.state})",
                        code="E_NAME_TAKEN",
                        hint=f"pick another --name or run: mvmctl down {rec.name}",
                    )
                conn.execute("DELETE FROM ports WHERE vm = ?", (rec.name,))
                conn.execute("DELETE FROM vms WHERE name = ?", (rec.name,))
            conn.execute(_VM_INSERT, _vm_params(rec))
            conn.executemany(_PORT_INSERT, _port_rows(ports))
            return old

        try:
            return await self._write(claim)
        except sqlite3.IntegrityError as exc:
            raise _port_conflict(rec.name, exc) from exc

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
        _check_vm_values(fields)
        if not fields:
            return await self.get_vm(name) is not None
        values = [int(v) if k == "sealed" else v for k, v in fields.items()]
        sql = f"UPDATE vms SET {', '.join(f'{k} = ?' for k in fields)} WHERE name = ?"
        changed = await self._write(lambda c: c.execute(sql, (*values, name)).rowcount)
        return changed > 0

    async def get_vm(self, name: str) -> VmRecord | None:
        row = await self._read(
            lambda c: c.execute(f"{_VM_SELECT} WHERE name = ?", (name,)).fetchone()
        )
        return _vm_from_row(row) if row is not None else None

    async def list_vms(self) -> list[VmRecord]:
        rows = await self._read(
            lambda c: c.execute(f"{_VM_SELECT} ORDER BY created_at, name").fetchall()
        )
        return [_vm_from_row(r) for r in rows]

    async def delete_vm(self, name: str) -> bool:
        """Remove a VM and its ports; return False if it did not exist."""

        def delete(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM ports WHERE vm = ?", (name,))
            return conn.execute("DELETE FROM vms WHERE name = ?", (name,)).rowcount

        return await self._write(delete) > 0

    # -- ports ---------------------------------------------------------------------------------

    async def set_ports(self, vm: str, ports: Sequence[PortRecord]) -> None:
        """Replace all ports of ``vm`` at once: readers see the old set or the new one."""
        _check_ports(vm, ports)

        def replace(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM vms WHERE name = ?", (vm,)).fetchone() is None:
                raise NotFoundError(f"no VM named {vm!r}", hint="list VMs with: mvmctl ls")
            conn.execute("DELETE FROM ports WHERE vm = ?", (vm,))
            conn.executemany(_PORT_INSERT, _port_rows(ports))

        try:
            await self._write(replace)
        except sqlite3.IntegrityError as exc:
            raise _port_conflict(vm, exc) from exc

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

    # -- builds --------------------------------------------------------------------------------

    async def record_build(
        self,
        key: str,
        spec_hash: str,
        path: str,
        status: str = "ready",
        *,
        created_at: float | None = None,
    ) -> BuildRecord:
        """Insert or replace the build cached under ``key``."""
        if status not in BUILD_STATUSES:
            raise ValueError(f"status must be one of {sorted(BUILD_STATUSES)}, not {status!r}")
        rec = BuildRecord(
            key=key,
            spec_hash=spec_hash,
            path=path,
            created_at=time.time() if created_at is None else created_at,
            status=status,
        )
        await self._write(
            lambda c: c.execute(
                "INSERT INTO builds (key, spec_hash, path, created_at, status) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET "
                "spec_hash = excluded.spec_hash, path = excluded.path, "
                "created_at = excluded.created_at, status = excluded.status",
                (rec.key, rec.spec_hash, rec.path, rec.created_at, rec.status),
            )
        )
        return rec

    async def get_build(self, key: str) -> BuildRecord | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT key, spec_hash, path, created_at, status FROM builds WHERE key = ?",
                (key,),
            ).fetchone()
        )
        if row is None:
            return None
        return BuildRecord(
            key=row[0], spec_hash=row[1], path=row[2], created_at=row[3], status=row[4]
        )

    # -- events --------------------------------------------------------------------------------

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

    async def list_events(
        self, vm: str | None = None, limit: int = 100, *, after: int | None = None
    ) -> list[EventRecord]:
        """The newest ``limit`` events (of ``vm``, if given), oldest first."""
        where: list[str] = []
        params: list[Any] = []
        if vm is not None:
            where.append("vm = ?")
            params.append(vm)
        if after is not None:
            where.append("id > ?")
            params.append(after)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT id, ts, kind, source, vm, data FROM events {clause} ORDER BY id DESC LIMIT ?"
        rows = await self._read(lambda c: c.execute(sql, (*params, limit)).fetchall())
        return [
            EventRecord(id=r[0], ts=r[1], kind=r[2], source=r[3], vm=r[4], data=json.loads(r[5]))
            for r in reversed(rows)
        ]

    async def prune_events(self, keep: int) -> int:
        """Delete all but the newest ``keep`` events; return how many went."""
        return await self._write(
            lambda c: (
                c.execute(
                    "DELETE FROM events WHERE id NOT IN "
                    "(SELECT id FROM events ORDER BY id DESC LIMIT ?)",
                    (keep,),
                ).rowcount
            )
        )


def _port_conflict(vm: str, exc: sqlite3.IntegrityError) -> ConflictError | NotFoundError:
    if "FOREIGN KEY" in str(exc):
        return NotFoundError(f"no VM named {vm!r}", hint="list VMs with: mvmctl ls")
    return ConflictError(
        f"VM {vm!r}: the same host address and port is listed twice",
        code="E_PORT_DUPLICATE",
        hint="give each -p HOST_PORT only once",
    )
