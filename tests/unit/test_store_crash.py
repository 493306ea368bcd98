"""The state store across real processes: SIGKILL in the middle of writes leaves
no half-written group, and a name raced by several processes has one winner.

Children are ``python -c`` programs against the installed ``mvm`` and run on
asyncio, so these tests also cover the store outside trio.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import anyio
import pytest

from mvm.engine.store import StateStore, VmRecord

# One iteration = four transactions: insert vm{i} with its ports; regenerate
# vm{i-1} (spec and ports together, in a multi-statement transaction whose
# statements each take a separate hop to the worker thread); delete vm{i-3}
# (ports, then row); append an event. The invariant a reader can check: every
# VM's ports are exactly expected_ports(gen, n) of the spec it carries.
WRITER = r"""
import json, sys, anyio
from pathlib import Path
from mvm.engine.store import PortRecord, StateStore, VmRecord

def expected(name, gen, n):
    return [PortRecord(name, f"10.0.{gen % 250}.1", 20000 + j, 1000 + gen % 60000)
            for j in range(n)]

def record(name, gen, n):
    return VmRecord(
        name=name, backend="fake", mode="detached", state="running", pid=None,
        pid_start_time=None, run_dir="/r/" + name, image="img", sealed=False,
        created_at=0.0, started_at=None, exited_at=None, exit_code=None, exit_reason=None,
        control_socket=None, agent_socket=None, console_log=None,
        spec_json=json.dumps({"gen": gen, "n": n}), owner=None)

async def main(db, start):
    async with StateStore.open(Path(db)) as st:
        for i in range(start, start + 1_000_000):
            name = f"vm{i}"
            await st.insert_vm(record(name, 0, i % 4 + 1), expected(name, 0, i % 4 + 1))
            prev, gen, n = f"vm{i - 1}", i, i % 5
            async with st.transaction() as tx:
                if await tx.execute("SELECT 1 FROM vms WHERE name = ?", (prev,)):
                    await tx.execute("UPDATE vms SET spec_json = ? WHERE name = ?",
                                     (json.dumps({"gen": gen, "n": n}), prev))
                    await tx.execute("DELETE FROM ports WHERE vm = ?", (prev,))
                    await tx.executemany(
                        "INSERT INTO ports (vm, host_addr, host_port, guest_port) "
                        "VALUES (?, ?, ?, ?)",
                        [(p.vm, p.host_addr, p.host_port, p.guest_port)
                         for p in expected(prev, gen, n)])
            await st.delete_vm(f"vm{i - 3}")
            await st.append_event("test.step", "writer", name, {"i": i})
            print("committed", i, flush=True)

anyio.run(main, sys.argv[1], int(sys.argv[2]), backend="asyncio")
"""

RACER = r"""
import os, sys, time, anyio
from pathlib import Path
from mvm.engine.base.errors import MvmError
from mvm.engine.store import StateStore, VmRecord

async def main(db, go, how):
    async with StateStore.open(Path(db)) as st:
        print("ready", flush=True)
        while not os.path.exists(go):
            time.sleep(0.0005)
        try:
            await getattr(st, how)(VmRecord(
                name="contested", backend="fake", mode="detached", state="starting",
                pid=None, pid_start_time=None, run_dir="/r", image="img", sealed=True,
                created_at=0.0, started_at=None, exited_at=None, exit_code=None,
                exit_reason=None, control_socket=None, agent_socket=None, console_log=None,
                spec_json="{}", owner=str(os.getpid())))
        except MvmError as exc:
            print("result", exc.code, flush=True)
        else:
            print("result OK", flush=True)

anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], backend="asyncio")
"""


def _child_env() -> dict[str, str]:
    return {**os.environ, "MVM_LOG_LEVEL": "error"}


def _protocol_line(stream: IO[str], prefix: str) -> str:
    """The next line starting with prefix; log lines in between are skipped."""
    for line in stream:
        if line.startswith(prefix):
            return line
    return ""


def _expected_ports(name: str, gen: int, n: int) -> list[tuple[str, str, int, int]]:
    return [(name, f"10.0.{gen % 250}.1", 20000 + j, 1000 + gen % 60000) for j in range(n)]


def _check_invariants(db: Path, last: int) -> int:
    """Check the database after a crash; return the number of VMs in it."""
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        vms = conn.execute("SELECT name, spec_json FROM vms").fetchall()
        for name, spec_json in vms:
            spec = json.loads(spec_json)
            got = conn.execute(
                "SELECT vm, host_addr, host_port, guest_port FROM ports "
                "WHERE vm = ? ORDER BY host_port",
                (name,),
            ).fetchall()
            assert got == _expected_ports(name, spec["gen"], spec["n"]), (name, spec, got)
        orphans = conn.execute(
            "SELECT count(*) FROM ports WHERE vm NOT IN (SELECT name FROM vms)"
        ).fetchone()
        assert orphans == (0,)
        names = {int(name[2:]) for name, _ in vms}
        # Committed work is durable, and at most one iteration is past the last report.
        assert last in names, (last, sorted(names))
        assert last - 3 not in names
        assert max(names) <= last + 1
        steps = [
            json.loads(d)["i"]
            for (d,) in conn.execute("SELECT data FROM events WHERE kind = 'test.step'")
        ]
        assert max(steps) >= last
        # A deleted row leaves its vm.removed tombstone in the same transaction: exactly
        # the rows that were inserted (a committed step, or still present) and are gone.
        tombstones = {
            int(vm[2:]) for (vm,) in conn.execute("SELECT vm FROM events WHERE kind = 'vm.removed'")
        }
        assert tombstones == (set(steps) | names) - names
        return len(vms)
    finally:
        conn.close()


def test_sigkill_mid_write_never_leaves_half_a_group(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    total_steps = 0
    for round_ in range(5):
        start = round_ * 100_000
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        try:
            assert child.stdout is not None
            first = _protocol_line(child.stdout, "committed")
            assert first.startswith("committed"), (first, child.stderr and child.stderr.read())
            time.sleep(rng.uniform(0.0, 0.25))
            assert child.poll() is None, "the writer must still be mid-loop when killed"
            child.send_signal(signal.SIGKILL)
            out, _ = child.communicate(timeout=10)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode == -signal.SIGKILL
        lines = [first, *(ln for ln in out.splitlines() if ln.startswith("committed"))]
        last = int(lines[-1].split()[1])
        total_steps += last - start + 1
        assert _check_invariants(db, last) > 0, f"seed {seed}"

    async def reopen() -> int:
        async with StateStore.open(db) as st:
            for rec in await st.list_vms():
                spec = json.loads(rec.spec_json)
                assert len(await st.list_ports(rec.name)) == spec["n"]
            return len(await st.list_events(limit=1_000_000))

    assert anyio.run(reopen, backend="asyncio") >= total_steps


@pytest.mark.parametrize("how", ["insert_vm", "claim_vm"])
def test_only_one_of_many_processes_gets_a_name(tmp_path: Path, how: str) -> None:
    """insert_vm races on a fresh database (the racers also race to create the
    schema); claim_vm races to replace an exited VM of that name, which only a
    check-and-replace inside one transaction gets right."""
    db = tmp_path / "state.db"
    go = tmp_path / "go"
    if how == "claim_vm":
        anyio.run(_seed_exited, db, backend="asyncio")
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(db), str(go), how],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        for _ in range(5)
    ]
    try:
        for p in racers:
            assert p.stdout is not None
            line = _protocol_line(p.stdout, "ready")
            assert line == "ready\n", (line, p.stderr and p.stderr.read())
        go.touch()
        results: dict[int, str] = {}
        for p in racers:
            out, err = p.communicate(timeout=20)
            assert p.returncode == 0, err
            assert "Traceback" not in err
            results[p.pid] = next(ln for ln in out.splitlines() if ln.startswith("result"))[7:]
    finally:
        for p in racers:
            if p.poll() is None:
                p.kill()
                p.wait()
    winners = [pid for pid, r in results.items() if r == "OK"]
    assert len(winners) == 1, results
    assert sorted(r for r in results.values() if r != "OK") == ["E_NAME_TAKEN"] * 4
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT owner, state FROM vms WHERE name = 'contested'").fetchall()
        versions = conn.execute("SELECT version FROM schema_version").fetchall()
    finally:
        conn.close()
    assert rows == [(str(winners[0]), "starting")]
    assert len(versions) == len(set(versions))


async def _seed_exited(db: Path) -> None:
    async with StateStore.open(db) as st:
        await st.insert_vm(
            VmRecord(
                name="contested",
                backend="fake",
                mode="detached",
                state="exited",
                pid=None,
                pid_start_time=None,
                run_dir="/r",
                image="img",
                sealed=True,
                created_at=0.0,
                started_at=None,
                exited_at=1.0,
                exit_code=0,
                exit_reason="guest exited",
                control_socket=None,
                agent_socket=None,
                console_log=None,
                spec_json="{}",
                owner="seed",
            )
        )
