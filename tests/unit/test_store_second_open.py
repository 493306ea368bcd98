"""Opening a second StateStore in a process must not cost the first its SQLite locks.

POSIX advisory locks belong to the process and die with ANY close() of the file: the
store's "create the file 0600" step (``os.close(os.open(state.db))``) released the shared
lock an already open connection of the same process held. Another process that closed
its connection then believed it was the last one, checkpointed and deleted
``state.db-wal``/``-shm`` under the open connection, which from then on read and wrote a
private, deleted WAL (found by the fleet's host agent: rows it deleted came back, rows
a shim wrote never showed).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mvm.engine.store import StateStore

CHILD = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("CREATE TABLE IF NOT EXISTS probe (v TEXT)")
c.execute("INSERT INTO probe VALUES ('from-the-child')")
c.close()
"""


async def test_a_second_open_keeps_the_first_connections_view_shared(tmp_path: Path) -> None:
    db = tmp_path / "state.db"
    async with StateStore.open(db) as first:
        await first.list_vms()
        async with StateStore.open(db) as second:  # the open under test
            await second.list_vms()
        # another process writes and closes: it must not delete the WAL under `first`
        subprocess.run([sys.executable, "-c", CHILD, str(db)], check=True, timeout=60)
        assert (tmp_path / "state.db-wal").exists()
        rows = await first._read(lambda c: c.execute("SELECT v FROM probe").fetchall())
        assert rows == [("from-the-child",)]
