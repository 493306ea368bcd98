"""Canonical JSON (RFC 8785) of IR values and the ``ir_hash`` that names a workload.

The hash is taken over the *parsed and re-serialized* workload, never over the
user's bytes: key order, whitespace, escapes and omitted defaults do not change
what a workload means, so they must not change its hash either. The artifact
cache and signed execution plans key on this hash.
"""

from __future__ import annotations

import hashlib
from typing import Any

import rfc8785

from mvm.engine.ir.convert import unstructure
from mvm.engine.ir.model import Workload


def canonical_json(value: Any) -> bytes:
    """RFC 8785 JCS bytes of a JSON value (sorted keys, no whitespace, ES6 numbers)."""
    return bytes(rfc8785.dumps(value))


def workload_to_dict(workload: Workload) -> dict[str, Any]:
    data: dict[str, Any] = unstructure(workload)
    return data


def canonical_ir(workload: Workload) -> bytes:
    return canonical_json(workload_to_dict(workload))


def ir_hash(workload: Workload) -> str:
    """Lowercase hex SHA-256 of the workload's canonical JSON."""
    return hashlib.sha256(canonical_ir(workload)).hexdigest()
