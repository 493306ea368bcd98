"""Opening the state database file: private directories, WAL, pragmas, migrations.

This is the blocking part of ``StateStore.open``, run once on a worker thread.
It is separate because it is about the file and how SQLite is configured for
several processes sharing it, not about the rows: WAL so readers never block
the writer, a busy timeout so writers queue instead of failing, FULL sync so a
committed state change survives a power cut, and foreign keys on (SQLite's
default is off) so ports cannot outlive their VM.

The busy timeout is an argument rather than a constant here: StateStore owns
it (``mvm.engine.store.BUSY_TIMEOUT_S``) and passes its current value.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path

from mvm.engine.base.errors import StateError
from mvm.engine.base.paths import make_private_dirs
from mvm.engine.store.migrations import apply_migrations
from mvm.engine.store.sqlite_errors import state_error


def enable_wal(conn: sqlite3.Connection, busy_timeout_s: float) -> None:
    """SQLite does not run its busy handler for a journal mode change, so a second
    process racing the first one to open a fresh file retries here instead."""
    deadline = time.monotonic() + busy_timeout_s
    while conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def open_connection(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """Create (0600, in 0700 directories), configure and migrate the database at
    ``path``; blocking. Raises StateError with an E_DB_* code for what SQLite
    reports about the file (newer schema, corrupt, unwritable)."""
    try:
        make_private_dirs(path.parent)
        # Only a missing file is created here: closing ANY descriptor of an existing one
        # drops the POSIX locks this process's open connections hold on it, and another
        # process's close then deletes the WAL under them (tests/unit/test_store_second_open.py).
        if not path.exists():
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
        timeout=busy_timeout_s,
        isolation_level=None,  # we issue BEGIN/COMMIT ourselves
        check_same_thread=False,  # used from anyio worker threads, one at a time
    )
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the header
        enable_wal(conn, busy_timeout_s)
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        apply_migrations(conn, str(path))
    except sqlite3.DatabaseError as exc:
        conn.close()
        mapped = state_error(path, exc, busy_timeout_s)
        if mapped is None:
            raise
        raise mapped from exc
    except BaseException:
        conn.close()
        raise
    return conn
