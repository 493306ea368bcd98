"""The audit chain's signed head, kept outside the database.

The in-database head only proves integrity *relative to itself*: whoever can write
the database can delete the newest entries and rewrite the head, or wipe both tables.
So every append also writes ``audit.db.head`` next to the database (JSON: sequence
number, entry hash, key id, Ed25519 signature by the host key, mode 0600). ``audit
verify`` checks the signature and compares it with the chain, which names
truncation with a rewritten head, wiped tables and a deleted database.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import attrs

from mvm.engine.admission.keys import KEY_FILENAME, HostKey, verify_signature

HEAD_SUFFIX = ".head"


def head_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.name + HEAD_SUFFIX)


def key_path_for(db_path: Path) -> Path:
    """The host key beside the database (``$MVM_HOME/keys/...`` for the default one)."""
    return db_path.parent / "keys" / KEY_FILENAME


@attrs.frozen
class SignedHead:
    seq: int
    hash: str
    key_id: str
    signature: str

    @staticmethod
    def payload(seq: int, digest: str) -> bytes:
        return f"mvm-audit-head\n{seq}\n{digest}\n".encode("ascii")


def read_db_head(conn: sqlite3.Connection) -> tuple[int, str] | None:
    row = conn.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    return (int(row[0]), str(row[1])) if row else None


def write_head(db_path: Path, key: HostKey, seq: int, digest: str) -> bytes | None:
    """Atomically replace the signed head; returns the previous file's bytes (for a
    rollback) or None when there was none."""
    path = head_path(db_path)
    try:
        previous: bytes | None = path.read_bytes()
    except FileNotFoundError:
        previous = None
    sig = base64.b64encode(key.sign(SignedHead.payload(seq, digest))).decode("ascii")
    doc = {"seq": seq, "hash": digest, "key_id": key.key_id, "signature": sig}
    _replace(path, json.dumps(doc, sort_keys=True).encode("utf-8") + b"\n")
    return previous


def restore_head(db_path: Path, previous: bytes | None) -> None:
    path = head_path(db_path)
    if previous is None:
        path.unlink(missing_ok=True)
    else:
        _replace(path, previous)


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".audit-head-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class HeadProblem(Exception):
    """The signed head file exists but cannot be trusted (unreadable, edited, bad signature)."""


def load_head(db_path: Path, key: HostKey | None = None) -> SignedHead | None:
    """The verified signed head, None when there is no head file; HeadProblem when
    it is there but does not verify."""
    path = head_path(db_path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise HeadProblem(f"signed head {path} cannot be read ({exc.strerror})") from None
    try:
        doc: Any = json.loads(raw)
        head = SignedHead(
            seq=int(doc["seq"]),
            hash=str(doc["hash"]),
            key_id=str(doc["key_id"]),
            signature=str(doc["signature"]),
        )
        signature = base64.b64decode(head.signature, validate=True)
    except (ValueError, KeyError, TypeError):
        raise HeadProblem(f"signed head {path} is not a valid head file (edited)") from None
    if key is None:
        key_file = key_path_for(db_path)
        if not key_file.exists():
            raise HeadProblem(f"the host key {key_file} that signed the head is missing")
        key = HostKey.load_existing(key_file)
    if head.key_id != key.key_id or not verify_signature(
        key.public_key, signature, SignedHead.payload(head.seq, head.hash)
    ):
        raise HeadProblem(f"signed head {path} does not verify with the host key (edited)")
    return head
