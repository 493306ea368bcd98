"""``mvmctl events``: follow the store's event log, the events of every VM.

Each engine (a detached VM's shim, an attached ``mvmctl run``, an embedding app)
copies what its bus publishes into the state store (engine/event_log.py), so reading
the ``events`` table sees every VM, whichever process supervises it. Following is a
poll of ``id > last`` (sqlite has no change notification across processes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys

import anyio

from mvm.cli.since import parse_since
from mvm.engine.store import EventRecord, StateStore

POLL_S = 0.2


def format_event(ev: EventRecord, *, as_json: bool) -> str:
    if as_json:
        return json.dumps(
            {"id": ev.id, "ts": ev.ts, "kind": ev.kind, "source": ev.source, "vm": ev.vm,
             "data": ev.data},
            sort_keys=False,
            default=str,
        )  # fmt: skip
    when = datetime.datetime.fromtimestamp(ev.ts, datetime.UTC).isoformat(timespec="milliseconds")
    fields = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in sorted(ev.data.items()))
    # the publisher, where it is not the VM itself (an actor: agent, mux, forward, health)
    source = "" if ev.source in (f"vm/{ev.vm}", "store") else f" [{ev.source}]"
    return f"{when} {ev.kind} {ev.vm or '-'}{source} {fields}".rstrip()


async def cmd_events(args: argparse.Namespace) -> int:
    since = parse_since(args.since, code="E_EVENTS_SINCE") if args.since else None
    async with StateStore.open() as store:
        if since is not None:
            backlog = await store.list_events(args.name, limit=1_000_000, since=since, oldest=True)
            last = _print(backlog, args.json)
        else:
            newest = await store.list_events(limit=1)
            last = newest[-1].id if newest else 0
        if since is not None and not backlog:
            newest = await store.list_events(limit=1)
            last = newest[-1].id if newest else 0
        while args.follow:
            fresh = await store.list_events(args.name, limit=1000, after=last, oldest=True)
            if fresh:
                last = _print(fresh, args.json)
            else:
                await anyio.sleep(POLL_S)
    return 0


def _print(events: list[EventRecord], as_json: bool) -> int:
    for ev in events:
        sys.stdout.write(format_event(ev, as_json=as_json) + "\n")
    sys.stdout.flush()
    return events[-1].id if events else 0
