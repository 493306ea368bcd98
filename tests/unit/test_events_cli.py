"""``mvmctl events`` follows the store's events of every VM, across processes (issue 16).

The VM is a detached stub VM (its shim is one process), ``mvmctl events`` another and
``mvmctl down`` a third: the follower sees the shim's ``vm.ready`` (from the stored
backlog, ``--since``) and then the ``vm.stopped`` the shim publishes when ``down`` asks
it to stop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
from helpers.events import events_until, lines_of

from mvm.cli.events_commands import format_event
from mvm.cli.since import parse_since
from mvm.engine.base.errors import ConfigError
from mvm.engine.store import EventRecord, StateStore


def _mvmctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mvm.cli", *args],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_events_sees_a_stop_that_another_process_does() -> None:
    start = time.time()
    up = _mvmctl("up", "--backend", "stub", "--name", "evented")
    assert up.returncode == 0, up.stderr
    follower = subprocess.Popen(
        [sys.executable, "-m", "mvm.cli", "events", "--json", "--since", str(start - 1)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert follower.stdout is not None
        lines = lines_of(follower.stdout)
        backlog = events_until(lines, "evented", "vm.ready", timeout=30)
        assert any(e["kind"] == "vm.step.spawn_vmm" for e in backlog)
        down = _mvmctl("down", "evented")
        assert down.returncode == 0, down.stderr
        stopped = events_until(lines, "evented", "vm.stopped", timeout=30)[-1]
        assert stopped["data"]["reason"] == "stopped"
        assert follower.poll() is None  # still following
    finally:
        follower.terminate()
        follower.wait(timeout=30)
        _mvmctl("down", "evented")


def test_since_parses_durations_epochs_and_iso_dates() -> None:
    assert parse_since("10m", now=1000.0, code="E_EVENTS_SINCE") == 400.0
    assert parse_since("1.5", now=1000.0, code="E_EVENTS_SINCE") == 1.5
    assert parse_since("1970-01-01T00:01:00", code="E_EVENTS_SINCE") == 60.0
    with pytest.raises(ConfigError) as err:
        parse_since("yesterday", code="E_EVENTS_SINCE")
    assert err.value.code == "E_EVENTS_SINCE"


def test_an_event_line_names_kind_vm_and_data() -> None:
    ev = EventRecord(id=3, ts=60.0, kind="vm.stopped", source="vm/a", vm="a", data={"code": 0})
    assert format_event(ev, as_json=False) == "1970-01-01T00:01:00.000+00:00 vm.stopped a code=0"
    assert json.loads(format_event(ev, as_json=True))["kind"] == "vm.stopped"
    actor = attrs.evolve(ev, kind="actor.started", source="vm/a/agent", data={})
    assert format_event(actor, as_json=False).endswith("actor.started a [vm/a/agent]")


async def test_pruning_spares_the_removal_tombstones(mvm_home: Path) -> None:
    """``mvmctl wait`` reads a removed VM's status from its ``vm.removed`` event: the
    recorder's pruning (every engine's events now fill the table) keeps those."""
    async with StateStore.open() as store:
        await store.append_event("vm.removed", "store", "old", {"exit_code": 7})
        for i in range(5):
            await store.append_event("vm.step.mux", f"vm/{i}", str(i))
        assert await store.prune_events(2, spare="vm.removed") == 3
        kinds = [(e.kind, e.vm) for e in await store.list_events()]
        # a follower pages through a burst oldest first (none lost between polls)
        first = await store.list_events(limit=2, after=0, oldest=True)
    assert kinds == [("vm.removed", "old"), ("vm.step.mux", "3"), ("vm.step.mux", "4")]
    assert [e.vm for e in first] == ["old", "3"]
