"""The signed audit head outside the database catches what the chain alone cannot:
truncation with a rewritten head, wiped tables, a deleted database (issue 15)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mvm.engine.admission.audit import PLAN_ADMITTED, AuditLog, entry_hash
from mvm.engine.admission.audit_head import head_path


@pytest.fixture
def log(tmp_path: Path) -> AuditLog:
    audit = AuditLog(tmp_path / "audit.db")
    for i in range(1, 6):
        audit.append(PLAN_ADMITTED, {"vm": f"vm{i}", "i": i})
    assert audit.verify().ok
    return audit


def sql(audit: AuditLog, *statements: str) -> None:
    conn = sqlite3.connect(audit.path)
    with conn:
        for s in statements:
            conn.execute(s)
    conn.close()


def test_edit_is_named(log: AuditLog) -> None:
    sql(log, "UPDATE audit_log SET body = replace(body, 'vm3', 'vmX') WHERE seq = 3")
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 3)
    assert "edited" in (report.reason or "")


def test_delete_middle_is_named(log: AuditLog) -> None:
    sql(log, "DELETE FROM audit_log WHERE seq = 2")
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 2)
    assert "deleted" in (report.reason or "")


def test_delete_newest_and_rewrite_db_head_is_named(log: AuditLog) -> None:
    conn = sqlite3.connect(log.path)
    prev = conn.execute("SELECT hash FROM audit_log WHERE seq = 4").fetchone()[0]
    conn.close()
    sql(
        log,
        "DELETE FROM audit_log WHERE seq = 5",
        f"UPDATE audit_head SET seq = 4, hash = '{prev}' WHERE id = 1",
    )
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 5)
    assert "truncated" in (report.reason or "") and "rewritten" in (report.reason or "")


def test_wiped_tables_are_named(log: AuditLog) -> None:
    sql(log, "DELETE FROM audit_log", "DELETE FROM audit_head")
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 1)
    assert "entries 1..5 are missing" in (report.reason or "")
    assert "wiped" in (report.reason or "")


def test_deleted_database_is_named(log: AuditLog) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(str(log.path) + suffix).unlink(missing_ok=True)
    report = log.verify()
    assert (report.ok, report.first_bad_seq) == (False, 1)
    assert "missing (deleted)" in (report.reason or "")
    assert not log.path.exists(), "verify must not recreate a deleted database"


def test_forged_signed_head_is_named(log: AuditLog) -> None:
    text = head_path(log.path).read_text().replace('"seq": 5', '"seq": 4')
    head_path(log.path).write_text(text)
    report = log.verify()
    assert not report.ok
    assert "does not verify" in (report.reason or "")


def test_full_rewrite_with_recomputed_hashes_is_caught(log: AuditLog) -> None:
    """Recomputing every hash after deleting the newest entry fools the chain but
    not the signature."""
    conn = sqlite3.connect(log.path)
    prev = conn.execute("SELECT hash FROM audit_log WHERE seq = 4").fetchone()[0]
    conn.close()
    assert entry_hash  # the attacker has the algorithm; not the key
    sql(
        log,
        "DELETE FROM audit_log WHERE seq = 5",
        f"UPDATE audit_head SET seq = 4, hash = '{prev}'",
    )
    assert log.verify().first_bad_seq == 5


def _mvmctl(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MVM_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_audit_verify_exit_and_entry_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = AuditLog(home / "audit.db")
    for i in range(3):
        log.append(PLAN_ADMITTED, {"i": i})
    ok = _mvmctl("audit", "verify", home=home)
    assert ok.returncode == 0, ok.stderr
    sql(log, "DELETE FROM audit_log", "DELETE FROM audit_head")
    bad = _mvmctl("audit", "verify", home=home)
    assert bad.returncode != 0
    lines = [line for line in bad.stderr.splitlines() if line.startswith("error[")]
    assert len(lines) == 1 and lines[0].startswith("error[E_AUDIT_TAMPERED]: audit entry 1:")
    assert "Traceback" not in bad.stderr
