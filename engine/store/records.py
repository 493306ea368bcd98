"""Rows of the state database as frozen records, and the checks and conversions
between records and SQL parameters.

Kept apart from StateStore so that code which only passes records around (the
CLI, reconcile, actors) reads their shape here without the connection and
transaction machinery, and so the column order that the VM statements rely on
is defined in exactly one place: ``VM_COLUMNS`` follows the ``VmRecord`` fields.
Values are checked here, before SQL sees them, so a bad mode or port fails with
a message naming the field instead of a bare CHECK constraint error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

VM_MODES = frozenset({"attached", "detached"})
VM_STATES = frozenset({"starting", "running", "stopping", "exited", "failed"})
BUILD_STATUSES = frozenset({"building", "ready", "failed"})


@attrs.frozen(kw_only=True)
class VmRecord:
    """One row of ``vms``. ``owner`` is ``"<pid>:<start time>"`` of the supervising
    process (engine or shim) or None when nobody supervises the VM."""

    name: str
    backend: str
    mode: str
    state: str
    pid: int | None
    pid_start_time: int | None
    run_dir: str
    image: str
    sealed: bool
    created_at: float
    started_at: float | None
    exited_at: float | None
    exit_code: int | None
    exit_reason: str | None
    control_socket: str | None
    agent_socket: str | None
    console_log: str | None
    spec_json: str
    owner: str | None
    health: str | None = None  # JSON {service: state}, written by RuntimeVM


@attrs.frozen
class PortRecord:
    """One host port a VM forwards to a guest port (the ``ports`` table)."""

    vm: str
    host_addr: str
    host_port: int
    guest_port: int


@attrs.frozen(kw_only=True)
class BuildRecord:
    key: str
    spec_hash: str
    path: str
    created_at: float
    status: str


@attrs.frozen(kw_only=True)
class EventRecord:
    """One stored event (the ``events`` table): ``id`` only grows, so readers tail with
    ``after=id``."""

    id: int
    ts: float
    kind: str
    source: str
    vm: str | None
    data: Mapping[str, Any]


VM_COLUMNS: tuple[str, ...] = tuple(a.name for a in attrs.fields(VmRecord))


def vm_from_row(row: Sequence[Any]) -> VmRecord:
    """A ``vms`` row selected in ``VM_COLUMNS`` order; SQLite stores ``sealed`` as 0/1."""
    values = dict(zip(VM_COLUMNS, row, strict=True))
    values["sealed"] = bool(values["sealed"])
    return VmRecord(**values)


def vm_params(rec: VmRecord) -> tuple[Any, ...]:
    """Insert parameters for ``rec`` in ``VM_COLUMNS`` order."""
    return tuple(int(rec.sealed) if c == "sealed" else getattr(rec, c) for c in VM_COLUMNS)


def check_vm_values(fields: Mapping[str, Any]) -> None:
    """Reject bad values before SQL does, with a message naming the field."""
    if "mode" in fields and fields["mode"] not in VM_MODES:
        raise ValueError(f"mode must be one of {sorted(VM_MODES)}, not {fields['mode']!r}")
    if "state" in fields and fields["state"] not in VM_STATES:
        raise ValueError(f"state must be one of {sorted(VM_STATES)}, not {fields['state']!r}")


def check_ports(vm: str, ports: Sequence[PortRecord]) -> None:
    """Every port must belong to ``vm`` and name real port numbers."""
    for p in ports:
        if p.vm != vm:
            raise ValueError(f"port {p} belongs to {p.vm!r}, not {vm!r}")
        if not 0 <= p.host_port <= 65535 or not 1 <= p.guest_port <= 65535:
            raise ValueError(f"port out of range: {p}")


def port_rows(ports: Iterable[PortRecord]) -> list[tuple[str, str, int, int]]:
    """Insert parameters for ``ports``, in the column order of ``ports``."""
    return [(p.vm, p.host_addr, p.host_port, p.guest_port) for p in ports]
