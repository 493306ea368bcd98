"""Hash-chained audit log: appends link up, and every kind of tampering is named."""

from __future__ import annotations

import itertools
import json
import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from mvm.engine.admission.audit import (
    GENESIS_HASH,
    PLAN_ADMITTED,
    PLAN_FAILED,
    PLAN_LAUNCHED,
    AuditLog,
    audit_db_path,
    entry_hash,
)
from mvm.engine.base.errors import AuditTampered, ConfigError, SecurityError


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    audit = AuditLog(tmp_path / "audit.db")
    for i in range(1, 6):
        event = (PLAN_ADMITTED, PLAN_LAUNCHED, PLAN_FAILED)[i % 3]
        audit.append(event, {"vm": f"vm{i}", "i": i})
    return audit


def sql(audit: AuditLog, statement: str, *args: object) -> None:
    conn = sqlite3.connect(audit.path)
    with conn:
        conn.execute(statement, args)
    conn.close()


def body_of(audit: AuditLog, seq: int) -> dict[str, object]:
    conn = sqlite3.connect(audit.path)
    (text,) = conn.execute("SELECT body FROM audit_log WHERE seq = ?", (seq,)).fetchone()
    conn.close()
    data: dict[str, object] = json.loads(text)
    return data


def bad(audit: AuditLog) -> tuple[int | None, str]:
    report = audit.verify()
    assert not report.ok
    with pytest.raises(AuditTampered) as info:
        report.raise_if_bad()
    assert isinstance(info.value, SecurityError)
    assert info.value.code == "E_AUDIT_TAMPERED"
    assert info.value.seq == report.first_bad_seq
    assert f"audit entry {report.first_bad_seq}:" in info.value.one_line()
    return report.first_bad_seq, report.reason or ""


def test_default_location_is_mvm_home(mvm_home: Path) -> None:
    assert audit_db_path() == mvm_home / "audit.db"
    AuditLog().append("plan.admitted", {"vm": "a"})
    mode = stat.S_IMODE((mvm_home / "audit.db").stat().st_mode)
    assert mode == 0o600


def test_entries_chain_from_genesis(log: AuditLog) -> None:
    entries = log.entries()
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0].prev_hash == GENESIS_HASH
    for prev, cur in itertools.pairwise(entries):
        assert cur.prev_hash == prev.hash
    body = body_of(log, 3)
    assert entries[2].hash == entry_hash(entries[2].prev_hash, body)
    assert body["event"] == PLAN_ADMITTED and body["data"] == {"vm": "vm3", "i": 3}
    report = log.verify()
    assert report.ok and report.entries == 5 and report.first_bad_seq is None


def test_empty_log_verifies(tmp_path: Path) -> None:
    report = AuditLog(tmp_path / "a.db").verify()
    assert report.ok and report.entries == 0


def test_edited_body_is_named(log: AuditLog) -> None:
    body = body_of(log, 3)
    body["data"] = {"vm": "evil", "i": 3}
    sql(log, "UPDATE audit_log SET body = ? WHERE seq = 3", json.dumps(body))
    assert bad(log) == (3, "hash does not match the body (edited)")


def test_edit_with_recomputed_hash_breaks_the_next_link(log: AuditLog) -> None:
    body = body_of(log, 2)
    body["data"] = {"vm": "evil"}
    prev = log.entries()[0].hash
    sql(
        log,
        "UPDATE audit_log SET body = ?, hash = ? WHERE seq = 2",
        json.dumps(body),
        entry_hash(prev, body),
    )
    seq, reason = bad(log)
    assert seq == 3 and "does not link to entry 2" in reason


def test_deleted_middle_entry_is_named(log: AuditLog) -> None:
    sql(log, "DELETE FROM audit_log WHERE seq = 2")
    seq, reason = bad(log)
    assert seq == 2 and "missing" in reason


def test_deleted_last_entry_is_caught_by_the_head(log: AuditLog) -> None:
    sql(log, "DELETE FROM audit_log WHERE seq = 5")
    seq, reason = bad(log)
    assert seq == 5 and "truncated" in reason


def test_deleted_first_entry_is_named(log: AuditLog) -> None:
    sql(log, "DELETE FROM audit_log WHERE seq = 1")
    assert bad(log)[0] == 1


def test_swapped_entries_are_named(log: AuditLog) -> None:
    conn = sqlite3.connect(log.path)
    rows = {s: r for s, *r in conn.execute("SELECT seq, prev_hash, hash, body FROM audit_log")}
    with conn:
        for a, b in ((2, 4), (4, 2)):
            conn.execute(
                "UPDATE audit_log SET prev_hash = ?, hash = ?, body = ? WHERE seq = ?",
                (*rows[b], a),
            )
    conn.close()
    seq, reason = bad(log)
    assert seq == 2 and "sequence number" in reason


def test_inserted_entry_in_the_middle_is_named(log: AuditLog) -> None:
    # Shift entries 3..5 up by one and forge a well-formed entry 3 linked to entry 2.
    conn = sqlite3.connect(log.path)
    with conn:
        conn.execute("UPDATE audit_log SET seq = seq + 100 WHERE seq >= 3")
        conn.execute("UPDATE audit_log SET seq = seq - 99 WHERE seq >= 100")
        prev = conn.execute("SELECT hash FROM audit_log WHERE seq = 2").fetchone()[0]
        body = {"seq": 3, "time": "2026-01-01T00:00:00Z", "event": "plan.admitted", "data": {}}
        conn.execute(
            "INSERT INTO audit_log VALUES (3, ?, ?, ?)",
            (prev, entry_hash(prev, body), json.dumps(body)),
        )
    conn.close()
    seq, reason = bad(log)
    assert seq == 4 and "sequence number" in reason


def test_appended_row_behind_the_logs_back_is_named(log: AuditLog) -> None:
    prev = log.entries()[-1].hash
    body = {"seq": 6, "time": "2026-01-01T00:00:00Z", "event": "plan.launched", "data": {}}
    sql(
        log,
        "INSERT INTO audit_log VALUES (6, ?, ?, ?)",
        prev,
        entry_hash(prev, body),
        json.dumps(body),
    )
    seq, reason = bad(log)
    assert seq == 6 and "inserted" in reason


def test_edited_prev_hash_and_head_are_named(log: AuditLog) -> None:
    sql(log, "UPDATE audit_head SET hash = ?", "f" * 64)
    assert bad(log)[0] == 5
    sql(log, "UPDATE audit_head SET hash = (SELECT hash FROM audit_log WHERE seq = 5)")
    assert log.verify().ok
    sql(log, "UPDATE audit_log SET prev_hash = ? WHERE seq = 4", "0" * 64)
    assert bad(log)[0] == 4


def test_garbage_body_is_named_not_a_crash(log: AuditLog) -> None:
    sql(log, "UPDATE audit_log SET body = ? WHERE seq = 4", "{not json")
    assert bad(log) == (4, "body is not valid JSON (edited)")


def test_non_json_data_is_refused_and_nothing_is_written(log: AuditLog) -> None:
    with pytest.raises(ConfigError) as info:
        log.append(PLAN_ADMITTED, {"when": object()})
    assert info.value.code == "E_AUDIT_DATA"
    assert len(log.entries()) == 5 and log.verify().ok


def test_concurrent_appends_from_threads_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"

    def writer(n: int) -> None:
        audit = AuditLog(path)
        for i in range(20):
            audit.append(PLAN_LAUNCHED, {"writer": n, "i": i})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    audit = AuditLog(path)
    assert [e.seq for e in audit.entries()] == list(range(1, 81))
    assert audit.verify().ok


async def test_async_wrappers_run_in_a_worker_thread(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.db")
    entry = await audit.append_async(PLAN_ADMITTED, {"vm": "a"})
    assert entry.seq == 1
    assert (await audit.verify_async()).ok
