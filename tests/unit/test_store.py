"""State store: CRUD round trips, name conflicts, atomic port replacement,
migrations (idempotent, all-or-nothing, newer schema refused), corrupt files,
lock timeouts and transactions under exceptions and cancellation."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest

from mvm.engine.base import paths
from mvm.engine.base.errors import ConflictError, NotFoundError, StateError
from mvm.engine.store import PortRecord, StateStore, VmRecord
from mvm.engine.store import state as store
from mvm.engine.store.migrations import (
    LATEST,
    MIGRATIONS,
    Migration,
    apply_migrations,
    current_version,
)


def vm(name: str, **over: Any) -> VmRecord:
    base = VmRecord(
        name=name,
        backend="qemu",
        mode="detached",
        state="starting",
        pid=None,
        pid_start_time=None,
        run_dir=f"/run/{name}",
        image="/img/demo",
        sealed=False,
        created_at=1000.0,
        started_at=None,
        exited_at=None,
        exit_code=None,
        exit_reason=None,
        control_socket=None,
        agent_socket=None,
        console_log=None,
        spec_json='{"cpus": 1}',
        owner=None,
    )
    return attrs.evolve(base, **over)


def ports(name: str, *pairs: tuple[int, int]) -> list[PortRecord]:
    return [PortRecord(name, "127.0.0.1", h, g) for h, g in pairs]


def raw_rows(path: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def test_vm_round_trip_update_list_delete(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    full = vm(
        "full",
        mode="attached",
        state="running",
        pid=4242,
        pid_start_time=987654321,
        sealed=True,
        created_at=2000.5,
        started_at=2001.25,
        exited_at=2002.0,
        exit_code=3,
        exit_reason="guest exited",
        control_socket="/run/full/qmp.sock",
        agent_socket="/run/full/agent.sock",
        console_log="/run/full/console.log",
        owner="77:12345",
        health='{"web": "healthy"}',
    )
    async with StateStore.open(db) as st:
        await st.insert_vm(vm("later", created_at=3000.0))
        await st.insert_vm(full)
        await st.insert_vm(vm("b-early", created_at=1000.0))
        await st.insert_vm(vm("a-early", created_at=1000.0))
        assert await st.get_vm("full") == full
        assert await st.get_vm("nope") is None
        assert [r.name for r in await st.list_vms()] == ["a-early", "b-early", "full", "later"]

        assert await st.update_vm("later", state="exited", exit_code=0, pid=None, sealed=True)
        got = await st.get_vm("later")
        assert got is not None
        assert (got.state, got.exit_code, got.sealed) == ("exited", 0, True)
        assert got.created_at == 3000.0  # untouched columns stay
        assert not await st.update_vm("ghost", state="running")

        with pytest.raises(ValueError, match="bogus"):
            await st.update_vm("later", bogus=1)
        with pytest.raises(ValueError, match="name"):
            await st.update_vm("later", name="renamed")
        with pytest.raises(ValueError, match="state"):
            await st.update_vm("later", state="zombie")
        with pytest.raises(ValueError, match="mode"):
            await st.insert_vm(vm("badmode", mode="sideways"))

        await st.set_ports("full", ports("full", (8080, 80), (8443, 443)))
        assert await st.delete_vm("full")
        assert not await st.delete_vm("full")
        assert await st.get_vm("full") is None
        assert await st.list_ports("full") == []
    # Reopen: everything was committed, and the deleted VM left no port rows behind.
    async with StateStore.open(db) as st:
        assert [r.name for r in await st.list_vms()] == ["a-early", "b-early", "later"]
    assert raw_rows(db, "SELECT count(*) FROM ports") == [(0,)]


async def test_name_taken_leaves_the_first_row_alone(tmp_path: Path) -> None:
    async with StateStore.open(tmp_path / "s.db") as st:
        await st.insert_vm(vm("web", owner="1:1"), ports("web", (8080, 80)))
        with pytest.raises(ConflictError) as info:
            await st.insert_vm(vm("web", owner="2:2"), ports("web", (9090, 90)))
        assert info.value.code == "E_NAME_TAKEN"
        assert info.value.hint == "pick another --name or run: mvmctl down web"
        assert "error[E_NAME_TAKEN]" in info.value.one_line()
        got = await st.get_vm("web")
        assert got is not None and got.owner == "1:1"
        assert await st.list_ports("web") == ports("web", (8080, 80))


async def test_claim_replaces_only_a_finished_vm(tmp_path: Path) -> None:
    async with StateStore.open(tmp_path / "s.db") as st:
        assert await st.claim_vm(vm("web", owner="1:1"), ports("web", (8080, 80))) is None
        with pytest.raises(ConflictError) as info:
            await st.claim_vm(vm("web", owner="2:2"))
        assert info.value.code == "E_NAME_TAKEN" and "(starting)" in info.value.message

        await st.update_vm("web", state="exited", exit_code=0)
        old = await st.claim_vm(vm("web", owner="3:3"), ports("web", (9090, 90)))
        assert old is not None and old.owner == "1:1" and old.exit_code == 0
        new = await st.get_vm("web")
        assert new is not None and new.owner == "3:3" and new.exit_code is None
        assert await st.list_ports("web") == ports("web", (9090, 90))

        # A bad port set keeps the finished row: the delete is rolled back with it.
        await st.update_vm("web", state="failed")
        with pytest.raises(ConflictError, match="twice"):
            await st.claim_vm(vm("web", owner="4:4"), ports("web", (1, 1), (1, 2)))
        kept = await st.get_vm("web")
        assert kept is not None and (kept.owner, kept.state) == ("3:3", "failed")


async def test_set_ports_replaces_the_whole_set_or_nothing(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with StateStore.open(db) as st, StateStore.open(db) as other:
        await st.insert_vm(vm("web"))
        first = ports("web", (8080, 80), (8443, 443), (2222, 22))
        await st.set_ports("web", first)
        assert await st.list_ports("web") == first  # order as given

        # A duplicate in the new set fails after the old rows were deleted in the
        # same transaction: the rollback must bring all of them back.
        with pytest.raises(ConflictError) as info:
            await st.set_ports("web", ports("web", (9000, 1), (9000, 2)))
        assert info.value.code == "E_PORT_DUPLICATE"
        assert await st.list_ports("web") == first

        # A reader on another connection never sees a half-replaced set.
        async with st.transaction() as tx:
            await tx.execute("DELETE FROM ports WHERE vm = ?", ("web",))
            assert await other.list_ports("web") == first
        assert await other.list_ports("web") == []

        second = ports("web", (7000, 70))
        await st.set_ports("web", second)
        assert await other.list_ports("web") == second
        await st.set_ports("web", [])
        assert await st.list_ports("web") == []

        with pytest.raises(NotFoundError):
            await st.set_ports("ghost", ports("ghost", (1, 1)))
        with pytest.raises(ValueError, match="belongs to"):
            await st.set_ports("web", ports("other", (1, 1)))
        with pytest.raises(ValueError, match="range"):
            await st.set_ports("web", ports("web", (70000, 1)))


async def test_default_path_and_private_permissions(
    mvm_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with StateStore.open() as st:
        assert st.path == paths.db_path() == mvm_home / "state.db"
    assert (mvm_home / "state.db").exists()

    home = mvm_home / "nested" / "home"
    monkeypatch.setenv("MVM_HOME", str(home))
    async with StateStore.open() as st:
        await st.insert_vm(vm("x"))
    for d in (mvm_home / "nested", home):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "state.db").stat().st_mode) == 0o600
    assert raw_rows(home / "state.db", "PRAGMA journal_mode") == [("wal",)]


async def test_migrations_are_idempotent_on_reopen(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    for round_ in range(3):
        async with StateStore.open(db) as st:
            await st.insert_vm(vm(f"vm{round_}"))
            assert len(await st.list_vms()) == round_ + 1
    versions = raw_rows(db, "SELECT version FROM schema_version ORDER BY version")
    assert versions == [(m.version,) for m in MIGRATIONS]
    assert versions[-1] == (LATEST,)


def test_a_failing_migration_leaves_the_previous_version_whole(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    good = Migration(1, "one", ("CREATE TABLE a (x INTEGER)",))
    bad = Migration(2, "two", ("CREATE TABLE b (y INTEGER)", "INSERT INTO nowhere VALUES (1)"))
    assert apply_migrations(conn, "m.db", [good]) == 1
    with pytest.raises(sqlite3.OperationalError, match="nowhere"):
        apply_migrations(conn, "m.db", [good, bad])
    assert current_version(conn) == 1
    assert not conn.in_transaction
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "b" not in tables and "a" in tables

    fixed = Migration(2, "two", ("CREATE TABLE b (y INTEGER)",))
    assert apply_migrations(conn, "m.db", [good, fixed]) == 2
    assert apply_migrations(conn, "m.db", [good, fixed]) == 2
    assert conn.execute("SELECT count(*) FROM schema_version").fetchone() == (2,)
    conn.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    async with StateStore.open(db) as st:
        await st.insert_vm(vm("keep"))
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("INSERT INTO schema_version VALUES (?, 0, 'from the future')", (LATEST + 1,))
    conn.close()
    with pytest.raises(StateError) as info:
        async with StateStore.open(db):
            pass
    assert info.value.code == "E_DB_NEWER"
    assert "newer mvm" in info.value.message and str(db) in info.value.message
    assert info.value.hint == "upgrade mvm or point MVM_HOME elsewhere"
    assert raw_rows(db, "SELECT name FROM vms") == [("keep",)]  # nothing was touched


async def test_corrupt_file_is_named_and_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    garbage = b"this is not sqlite, it is a shopping list\n" * 200
    db.write_bytes(garbage)
    with pytest.raises(StateError) as info:
        async with StateStore.open(db):
            pass
    assert info.value.code == "E_DB_CORRUPT"
    assert str(db) in info.value.message
    assert info.value.hint is not None and "move it aside" in info.value.hint
    assert db.read_bytes() == garbage


def test_cli_shows_one_line_not_a_traceback(mvm_home: Path) -> None:
    (mvm_home / "state.db").write_bytes(os.urandom(8192))
    mvmctl = Path(sys.executable).with_name("mvmctl")
    proc = subprocess.run(
        [str(mvmctl), "ls"], capture_output=True, text=True, timeout=30, env=os.environ.copy()
    )
    assert proc.returncode != 0
    assert proc.stderr.startswith("error[E_DB_CORRUPT]: the state database"), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


async def test_lock_held_elsewhere_times_out_with_a_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "BUSY_TIMEOUT_S", 0.2)
    db = tmp_path / "s.db"
    async with StateStore.open(db) as st:
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        start = time.monotonic()
        with pytest.raises(StateError) as info:
            await st.insert_vm(vm("waits"))
        assert info.value.code == "E_DB_LOCKED"
        assert 0.15 < time.monotonic() - start < 3
        assert await st.get_vm("waits") is None  # readers are not blocked in WAL mode
        holder.execute("ROLLBACK")
        holder.close()
        await st.insert_vm(vm("waits"))  # no transaction was left open
        assert await st.get_vm("waits") is not None


async def test_transaction_rolls_back_on_error_and_on_cancel(tmp_path: Path) -> None:
    async with StateStore.open(tmp_path / "s.db") as st:
        await st.insert_vm(vm("web"), ports("web", (80, 80)))

        with pytest.raises(RuntimeError, match="boom"):
            async with st.transaction() as tx:
                await tx.execute("UPDATE vms SET state = 'running' WHERE name = 'web'")
                await tx.execute("DELETE FROM ports")
                raise RuntimeError("boom")

        entered = anyio.Event()

        async def stuck_writer() -> None:
            async with st.transaction() as tx:
                await tx.execute("UPDATE vms SET state = 'failed' WHERE name = 'web'")
                entered.set()
                await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(stuck_writer)
            await entered.wait()
            tg.cancel_scope.cancel()

        got = await st.get_vm("web")
        assert got is not None and got.state == "starting"
        assert await st.list_ports("web") == ports("web", (80, 80))
        # The connection is out of the transaction: new writes commit normally.
        assert await st.update_vm("web", state="running")
    assert raw_rows(tmp_path / "s.db", "SELECT state FROM vms") == [("running",)]


async def test_builds_and_events(tmp_path: Path) -> None:
    async with StateStore.open(tmp_path / "s.db") as st:
        assert await st.get_build("k1") is None
        await st.record_build("k1", "h1", "/cache/k1", "building", created_at=5.0)
        rec = await st.record_build("k1", "h1", "/cache/k1")
        assert await st.get_build("k1") == rec
        assert rec.status == "ready" and rec.created_at > 5.0
        with pytest.raises(ValueError, match="status"):
            await st.record_build("k2", "h", "/p", "half-done")

        ids = [
            await st.append_event("vm.ready", "RuntimeVM[a]", "a", {"boot_s": 0.7}, ts=1.0),
            await st.append_event("vm.ready", "RuntimeVM[b]", "b", {"where": Path("/x")}),
            await st.append_event("engine.started", "engine", None),
            await st.append_event("vm.stopped", "RuntimeVM[a]", "a", {"code": 0}),
        ]
        assert ids == sorted(ids)
        everything = await st.list_events()
        assert [e.kind for e in everything] == [
            "vm.ready",
            "vm.ready",
            "engine.started",
            "vm.stopped",
        ]
        assert everything[0].data == {"boot_s": 0.7} and everything[0].ts == 1.0
        assert everything[1].data == {"where": "/x"}
        assert [e.id for e in await st.list_events(vm="a")] == [ids[0], ids[3]]
        assert [e.id for e in await st.list_events(limit=2)] == ids[2:]
        assert [e.id for e in await st.list_events(after=ids[1])] == ids[2:]
        assert await st.prune_events(keep=1) == 3
        assert [e.id for e in await st.list_events()] == [ids[3]]


def test_public_api_on_asyncio(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        async with StateStore.open(tmp_path / "s.db") as st:
            await st.insert_vm(vm("one"), ports("one", (8080, 80)))
            try:
                await st.insert_vm(vm("one"))
            except ConflictError as exc:
                codes = [exc.code]
            await st.set_ports("one", ports("one", (9090, 90)))
            codes.append(str((await st.list_ports("one"))[0].host_port))
            await st.delete_vm("one")
            codes.append(str(await st.get_vm("one")))
            return codes

    assert anyio.run(scenario, backend="asyncio") == ["E_NAME_TAKEN", "9090", "None"]
