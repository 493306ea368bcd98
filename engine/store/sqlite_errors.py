"""What the state store raises: SQLite's exceptions mapped to stable error codes.

Callers (CLI, engine, shims) branch on ``code`` and show ``hint`` to the user,
so the mapping from SQLite's error names to E_DB_* / E_NAME_TAKEN / ... lives
in one place, apart from the code that runs the statements. Errors that are our
own bugs (API misuse, unexpected constraint violations) are deliberately not
mapped: they surface as they are.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from mvm.engine.base.errors import ConflictError, NotFoundError, StateError


def is_pk_violation(exc: sqlite3.IntegrityError) -> bool:
    return getattr(exc, "sqlite_errorname", "") in (
        "SQLITE_CONSTRAINT_PRIMARYKEY",
        "SQLITE_CONSTRAINT_UNIQUE",
    )


def name_taken(name: str) -> ConflictError:
    return ConflictError(
        f"a VM named {name!r} already exists",
        code="E_NAME_TAKEN",
        hint=f"pick another --name or run: mvmctl down {name}",
    )


def port_conflict(vm: str, exc: sqlite3.IntegrityError) -> ConflictError | NotFoundError:
    """A failed port insert: the VM is gone (foreign key) or a port is listed twice."""
    if "FOREIGN KEY" in str(exc):
        return NotFoundError(f"no VM named {vm!r}", hint="list VMs with: mvmctl ls")
    return ConflictError(
        f"VM {vm!r}: the same host address and port is listed twice",
        code="E_PORT_DUPLICATE",
        hint="give each -p HOST_PORT only once",
    )


def _corrupt(path: Path, exc: BaseException) -> StateError:
    return StateError(
        f"the state database {path} is not a readable SQLite database ({exc})",
        code="E_DB_CORRUPT",
        hint=f"move it aside (mv {path} {path}.bad) and mvm will start a fresh one; "
        "VMs it recorded will no longer be tracked",
    )


def state_error(path: Path, exc: sqlite3.DatabaseError, busy_timeout_s: float) -> StateError | None:
    """Map what SQLite raised to a stable code; None for our own bugs (misuse of the
    API, constraint violations), which callers handle or let surface as they are.

    ``busy_timeout_s`` is the wait that ran out, for the E_DB_LOCKED message."""
    text = str(exc)
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return StateError(
            f"the state database {path} stayed locked for more than {busy_timeout_s:g} s",
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
