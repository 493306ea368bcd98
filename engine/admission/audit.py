"""Hash-chained, append-only audit log of plan admissions and launches.

Each entry's hash is ``sha256(prev_hash || JCS(body))`` where the body holds the
sequence number, time, event and data, so an edited body, a deleted or inserted
row, or two swapped rows all break the chain at a nameable entry. A one-row
*head* table (last seq + hash, updated in the same transaction as every append)
anchors the end of the chain so that deleting the newest entries is caught too.

Storage is a plain SQLite file (default ``$MVM_HOME/audit.db``) accessed with the
stdlib driver: every append is one ``BEGIN IMMEDIATE`` transaction that reads the
head and inserts the next row, so concurrent writers (threads or processes) serialize
and a crash leaves either the whole entry or none. The async wrappers run the
blocking calls in a worker thread.

The in-database head alone proves integrity only relative to itself, so every
append also writes a signed head outside the database (engine/admission/audit_head.py):
``verify`` compares the two and names truncation with a rewritten head, wiped
tables and a deleted database. Whoever holds the host key can still forge both.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
import attrs

from mvm.engine.admission.audit_head import (
    HeadProblem,
    SignedHead,
    head_path,
    key_path_for,
    load_head,
    read_db_head,
    restore_head,
    write_head,
)
from mvm.engine.admission.keys import HostKey
from mvm.engine.base.errors import AuditTampered, ConfigError
from mvm.engine.base.log import get_logger
from mvm.engine.base.paths import ensure_home, mvm_home
from mvm.engine.ir.canonical import canonical_json
from mvm.engine.store.connection import enable_wal

log = get_logger("mvm.admission.audit")

GENESIS_HASH = "0" * 64
PLAN_ADMITTED = "plan.admitted"
PLAN_LAUNCHED = "plan.launched"
PLAN_FAILED = "plan.failed"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    seq INTEGER PRIMARY KEY,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
"""


def audit_db_path() -> Path:
    return mvm_home() / "audit.db"


_KEYS: dict[Path, HostKey] = {}


def _signer(path: Path, key: HostKey | None) -> HostKey:
    if key is not None:
        return key
    cached = _KEYS.get(path)
    if cached is None:
        cached = _KEYS[path] = HostKey.load_or_create(key_path_for(path))
    return cached


@contextmanager
def transaction(path: Path, key: HostKey | None = None) -> Iterator[sqlite3.Connection]:
    """One write transaction (``BEGIN IMMEDIATE``) on the audit database.

    Every launch writes here twice, so the connection is kept open per file and
    process (used by one thread at a time under a lock): a fresh connection per
    append re-ran the schema and paid a WAL checkpoint at every close, ~2 ms CPU."""
    with _WRITERS_LOCK:
        conn = _writer(path)
        signer = _signer(path, key)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            # The signed head is written while this transaction still holds the
            # write lock, so concurrent appenders cannot reorder head files.
            head = read_db_head(conn)
            previous = write_head(path, signer, *head) if head else None
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            if head:
                restore_head(path, previous)
            raise


_WRITERS: dict[Path, tuple[sqlite3.Connection, int]] = {}
_WRITERS_LOCK = threading.Lock()


def _writer(path: Path) -> sqlite3.Connection:
    """The cached connection for ``path``, reopened if the file was replaced."""
    inode = path.stat().st_ino if path.exists() else -1
    cached = _WRITERS.get(path)
    if cached is not None and cached[1] == inode:
        return cached[0]
    if cached is not None:
        cached[0].close()
    conn = _connect(path, check_same_thread=False)
    _WRITERS[path] = (conn, path.stat().st_ino)
    return conn


def _connect(path: Path, *, check_same_thread: bool = True) -> sqlite3.Connection:
    ensure_home(path.parent)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    conn = sqlite3.connect(
        path, timeout=30, isolation_level=None, check_same_thread=check_same_thread
    )
    try:
        enable_wal(conn, 30.0)
        conn.execute("PRAGMA synchronous=FULL")
        conn.executescript(_SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def entry_hash(prev_hash: str, body: Mapping[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical_json(dict(body))).hexdigest()


@attrs.frozen
class AuditEntry:
    seq: int
    time: str
    event: str
    data: dict[str, Any]
    prev_hash: str
    hash: str


@attrs.frozen
class VerifyReport:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    reason: str | None = None

    def raise_if_bad(self) -> None:
        if not self.ok:
            assert self.first_bad_seq is not None and self.reason is not None
            raise AuditTampered(self.first_bad_seq, self.reason)


def append_in(conn: sqlite3.Connection, event: str, data: Mapping[str, Any]) -> AuditEntry:
    """Append inside an open write transaction (see :func:`transaction`)."""
    head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    body = {"seq": seq, "time": now, "event": event, "data": dict(data)}
    try:
        text = canonical_json(body).decode("utf-8")
    except Exception as exc:
        raise ConfigError(
            f"audit data for {event} is not JSON: {exc}", code="E_AUDIT_DATA"
        ) from None
    digest = hashlib.sha256(bytes.fromhex(prev) + text.encode("utf-8")).hexdigest()  # = entry_hash
    conn.execute(
        "INSERT INTO audit_log (seq, prev_hash, hash, body) VALUES (?, ?, ?, ?)",
        (seq, prev, digest, text),
    )
    conn.execute(
        "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
        (seq, digest),
    )
    return AuditEntry(seq, now, event, dict(data), prev, digest)


class AuditLog:
    """The audit chain in one SQLite file."""

    def __init__(self, path: Path | None = None, *, key: HostKey | None = None) -> None:
        self.path = path or audit_db_path()
        self.key = key

    def append(self, event: str, data: Mapping[str, Any]) -> AuditEntry:
        with transaction(self.path, self.key) as conn:
            entry = append_in(conn, event, data)
        log.debug("audit_append", seq=entry.seq, audit_event=event)
        return entry

    def entries(self) -> list[AuditEntry]:
        conn = _connect(self.path)
        try:
            rows = conn.execute("SELECT seq, prev_hash, hash, body FROM audit_log ORDER BY seq")
            out = []
            for seq, prev, digest, text in rows:
                body = json.loads(text)
                out.append(AuditEntry(seq, body["time"], body["event"], body["data"], prev, digest))
            return out
        finally:
            conn.close()

    def verify(self) -> VerifyReport:
        """Walk the chain; report the first entry that does not check out, then hold
        the chain's end against the signed head kept outside the database."""
        ensure_home(self.path.parent)
        signed: SignedHead | None = None
        problem: str | None = None
        try:
            signed = load_head(self.path, self.key)
        except HeadProblem as exc:
            problem = str(exc)
        if not self.path.exists():
            rows: list[tuple[Any, ...]] = []
            head = None
            db_missing = True
        else:
            db_missing = False
            conn = _connect(self.path)
            try:
                rows = conn.execute(
                    "SELECT seq, prev_hash, hash, body FROM audit_log ORDER BY seq"
                ).fetchall()
                head = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
            finally:
                conn.close()
        report = _verify_rows(rows, head)
        if report.ok:
            report = _against_signed(report, rows, signed, problem, db_missing, self.path)
        if report.ok:
            log.info("audit_verified", entries=report.entries)
        else:
            log.warning("audit_tampered", seq=report.first_bad_seq, reason=report.reason)
        return report

    async def append_async(self, event: str, data: Mapping[str, Any]) -> AuditEntry:
        return await anyio.to_thread.run_sync(functools.partial(self.append, event, data))

    async def verify_async(self) -> VerifyReport:
        return await anyio.to_thread.run_sync(self.verify)


def _verify_rows(rows: list[tuple[Any, ...]], head: tuple[Any, ...] | None) -> VerifyReport:
    expected_seq, prev = 1, GENESIS_HASH
    for seq, prev_hash, digest, text in rows:

        def bad(at: int, reason: str) -> VerifyReport:
            return VerifyReport(False, len(rows), at, reason)

        if seq != expected_seq:
            return bad(expected_seq, f"entry is missing (deleted); the next entry is {seq}")
        try:
            body = json.loads(text)
        except (ValueError, TypeError):
            return bad(seq, "body is not valid JSON (edited)")
        if not isinstance(body, dict) or body.get("seq") != seq:
            return bad(seq, "body holds a different sequence number (moved or edited)")
        if prev_hash != prev:
            what = "the start of the log" if seq == 1 else f"entry {seq - 1}"
            return bad(seq, f"prev_hash does not link to {what} (inserted, reordered or edited)")
        try:
            recomputed = entry_hash(prev_hash, body)
        except Exception:
            return bad(seq, "body cannot be canonicalized (edited)")
        if recomputed != digest:
            return bad(seq, "hash does not match the body (edited)")
        prev, expected_seq = digest, expected_seq + 1
    last = expected_seq - 1
    if head is None:
        if rows:
            return VerifyReport(False, len(rows), 1, "chain head is missing (edited)")
        return VerifyReport(True, 0)
    head_seq, head_hash = head
    if head_seq > last:
        return VerifyReport(
            False, len(rows), last + 1, f"entries {last + 1}..{head_seq} are missing (truncated)"
        )
    if head_seq < last:
        return VerifyReport(
            False, len(rows), head_seq + 1, "entry was added behind the log's back (inserted)"
        )
    if head_hash != prev:
        return VerifyReport(False, len(rows), last, "chain head hash differs (edited)")
    return VerifyReport(True, len(rows))


def _against_signed(
    report: VerifyReport,
    rows: list[tuple[Any, ...]],
    signed: SignedHead | None,
    problem: str | None,
    db_missing: bool,
    path: Path,
) -> VerifyReport:
    """An intact chain must also end where the signed head says it ends."""
    n = len(rows)
    last_seq = int(rows[-1][0]) if rows else 0
    last_hash = str(rows[-1][2]) if rows else GENESIS_HASH
    if problem is not None:
        return VerifyReport(False, n, last_seq or 1, problem)
    if signed is None:
        if rows:
            return VerifyReport(
                False, n, last_seq, f"the signed head {head_path(path)} is missing (deleted)"
            )
        return report
    if db_missing:
        return VerifyReport(
            False,
            0,
            1,
            f"the audit database {path} is missing (deleted); "
            f"the signed head names {signed.seq} entries",
        )
    if signed.seq > last_seq:
        what = "the tables were wiped" if not rows else "the database head was rewritten"
        return VerifyReport(
            False,
            n,
            last_seq + 1,
            f"entries {last_seq + 1}..{signed.seq} are missing (truncated; {what})",
        )
    if signed.seq < last_seq:
        return VerifyReport(
            False, n, signed.seq + 1, "entry is not covered by the signed head (inserted)"
        )
    if signed.hash != last_hash:
        return VerifyReport(False, n, last_seq, "hash differs from the signed head (edited)")
    return report
