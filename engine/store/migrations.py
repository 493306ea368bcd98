"""Schema migrations of the state database (``$MVM_HOME/state.db``).

Each migration is a list of single SQL statements applied in one ``BEGIN
IMMEDIATE`` transaction together with its ``schema_version`` row, so a crash or
a failing statement leaves the previous version intact and a concurrent opener
(another mvmctl, a detached shim) either sees the old schema or the new one,
never half of it. SQLite DDL is transactional, which is what makes this work.

Migrations are append-only: never edit one that has shipped; add the next
version instead. A database whose version is newer than :data:`LATEST` was
written by a newer mvm and is refused rather than guessed at.

The audit chain and the plan nonce store live in ``audit.db`` (engine/admission/audit.py,
engine/admission/plans.py); table names here must not collide with theirs
(``audit_log``, ``audit_head``, ``plan_nonces``) in case they are ever merged.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

import attrs

from mvm.engine.base.errors import StateError
from mvm.engine.base.log import get_logger

log = get_logger("mvm.store")


@attrs.frozen
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="vms, ports, builds, events",
        statements=(
            """
            CREATE TABLE vms (
                name TEXT PRIMARY KEY NOT NULL,
                backend TEXT NOT NULL,
                mode TEXT NOT NULL CHECK (mode IN ('attached', 'detached')),
                state TEXT NOT NULL
                    CHECK (state IN ('starting', 'running', 'stopping', 'exited', 'failed')),
                pid INTEGER,
                pid_start_time INTEGER,
                run_dir TEXT NOT NULL,
                image TEXT NOT NULL,
                sealed INTEGER NOT NULL CHECK (sealed IN (0, 1)),
                created_at REAL NOT NULL,
                started_at REAL,
                exited_at REAL,
                exit_code INTEGER,
                exit_reason TEXT,
                control_socket TEXT,
                agent_socket TEXT,
                console_log TEXT,
                spec_json TEXT NOT NULL,
                owner TEXT,
                health TEXT
            )
            """,
            """
            CREATE TABLE ports (
                vm TEXT NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
                host_addr TEXT NOT NULL,
                host_port INTEGER NOT NULL CHECK (host_port BETWEEN 0 AND 65535),
                guest_port INTEGER NOT NULL CHECK (guest_port BETWEEN 1 AND 65535),
                PRIMARY KEY (vm, host_addr, host_port)
            )
            """,
            """
            CREATE TABLE builds (
                key TEXT PRIMARY KEY NOT NULL,
                spec_hash TEXT NOT NULL,
                path TEXT NOT NULL,
                created_at REAL NOT NULL,
                status TEXT NOT NULL CHECK (status IN ('building', 'ready', 'failed'))
            )
            """,
            """
            CREATE TABLE events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                ts REAL NOT NULL,
                kind TEXT NOT NULL,
                source TEXT NOT NULL,
                vm TEXT,
                data TEXT NOT NULL
            )
            """,
            "CREATE INDEX events_by_vm ON events (vm, id)",
        ),
    ),
)

LATEST = MIGRATIONS[-1].version

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY NOT NULL,
    applied_at REAL NOT NULL,
    description TEXT NOT NULL
)
"""


def current_version(conn: sqlite3.Connection) -> int:
    """The highest applied migration; 0 for a fresh (empty) database."""
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if has_table is None:
        return 0
    row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


def check_not_newer(conn: sqlite3.Connection, path: str, latest: int = LATEST) -> int:
    version = current_version(conn)
    if version > latest:
        raise StateError(
            f"the state database {path} has schema version {version} but this mvm knows "
            f"only up to {latest}: it was written by a newer mvm",
            code="E_DB_NEWER",
            hint="upgrade mvm or point MVM_HOME elsewhere",
        )
    return version


def apply_migrations(
    conn: sqlite3.Connection,
    path: str,
    migrations: Sequence[Migration] = MIGRATIONS,
) -> int:
    """Bring the database up to the last of ``migrations``; return the version reached.

    ``conn`` must be in autocommit mode (``isolation_level=None``) so that the
    explicit ``BEGIN IMMEDIATE`` here is the only transaction. The version is
    re-read inside each write transaction: two processes opening a fresh
    database at once both get here, and the second must not apply a step twice.
    """
    latest = migrations[-1].version if migrations else 0
    version = check_not_newer(conn, path, latest)
    for migration in migrations:
        if migration.version <= version:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(_VERSION_TABLE)
            version = check_not_newer(conn, path, latest)
            if migration.version > version:
                for statement in migration.statements:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at, description) "
                    "VALUES (?, ?, ?)",
                    (migration.version, time.time(), migration.description),
                )
                version = migration.version
                log.info("store.migrated", path=path, version=version, what=migration.description)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return version
