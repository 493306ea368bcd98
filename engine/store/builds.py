"""StateStore methods for the ``builds`` table: the image build cache index.

A mixin rather than part of StateStore because the build cache is its own
concern (keyed by build inputs, unrelated to VM rows) and keeping it out leaves
``store.py`` about the connection, transactions and VMs. It relies on
StateStore's ``_read``/``_write``, so every write is still one
``BEGIN IMMEDIATE`` transaction in one worker-thread hop.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from mvm.engine.store.records import BUILD_STATUSES, BuildRecord

T = TypeVar("T")


class BuildsMixin:
    """Build cache rows; mixed into StateStore, which provides ``_read``/``_write``."""

    if TYPE_CHECKING:

        async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

        async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T: ...

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
