"""Snapshot files and clone identity without a VM: the snapshot directory contract
(atomic publish, strict metadata, names), clone naming and ports, and the real
guest agent's side of a clone (host ``hello`` re-greets; ``identity`` goes to
/init over the control FIFO and is answered once /init confirms it)."""

from __future__ import annotations

import base64
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mvm.cli.clone_commands import clone_ports
from mvm.engine.base.errors import ConfigError, ConflictError, NotFoundError, StateError
from mvm.engine.request.vmrequest import PortMapping
from mvm.engine.vm.snapshots import (
    META_FILE,
    STATE_FILE,
    SnapshotMeta,
    clone_names,
    default_snapshot_name,
    delete_snapshot,
    list_snapshots,
    load_snapshot,
    new_identity,
    publish,
    snapshots_root,
    write_meta,
)

from .test_guest_agent import Agent, Frames


def _meta(name: str = "s1") -> SnapshotMeta:
    return SnapshotMeta(
        name=name,
        source="web",
        backend="qemu",
        image=Path("/img"),
        kernel=Path("/img/vmlinux"),
        rootfs=Path("/img/rootfs.ext4"),
        vcpus=1,
        memory_mib=256,
        accel="tcg",
        agent_transport="serial",
        sealed=True,
        created_at=1.0,
        state_bytes=3,
    )


def _stage(name: str) -> Path:
    root = snapshots_root()
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.tmp"
    tmp.mkdir()
    (tmp / STATE_FILE).write_bytes(b"abc")
    write_meta(tmp, _meta(name))
    return tmp


def test_publish_load_list_delete_round_trip() -> None:
    assert list_snapshots() == []
    tmp = _stage("s1")
    assert list_snapshots() == []  # a snapshot being written is invisible
    final = publish(tmp, "s1")
    assert final == snapshots_root() / "s1" and not tmp.exists()
    meta = load_snapshot("s1")
    assert meta == _meta("s1")
    assert meta.state_path == final / STATE_FILE
    assert [m.name for m in list_snapshots()] == ["s1"]
    delete_snapshot("s1")
    assert list_snapshots() == []
    with pytest.raises(NotFoundError) as err:
        load_snapshot("s1")
    assert err.value.code == "E_SNAPSHOT_NOT_FOUND"


def test_publish_never_overwrites_an_existing_snapshot() -> None:
    publish(_stage("s1"), "s1")
    again = _stage("s1b")
    with pytest.raises(ConflictError) as err:
        publish(again, "s1")
    assert err.value.code == "E_SNAPSHOT_EXISTS"
    assert load_snapshot("s1").name == "s1"


def test_corrupt_or_incomplete_snapshots_are_coded() -> None:
    final = publish(_stage("s1"), "s1")
    (final / STATE_FILE).unlink()
    with pytest.raises(StateError) as err:
        load_snapshot("s1")
    assert err.value.code == "E_SNAPSHOT_CORRUPT"
    (final / STATE_FILE).write_bytes(b"x")
    raw = json.loads((final / META_FILE).read_text())
    (final / META_FILE).write_text(json.dumps({**raw, "unknown_field": 1, "vcpus": "two"}))
    with pytest.raises(StateError):
        load_snapshot("s1")
    (final / META_FILE).write_text(json.dumps({**raw, "name": "other"}))
    with pytest.raises(StateError):
        load_snapshot("s1")
    (final / META_FILE).write_text("{not json")
    with pytest.raises(StateError):
        load_snapshot("s1")
    assert list_snapshots() == []  # unreadable ones are skipped, not fatal


@pytest.mark.parametrize("bad", ["", "-x", "a/b", "../x", "a" * 64, "sp ace"])
def test_snapshot_names_are_checked(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_snapshot(bad)
    assert err.value.code == "E_SNAPSHOT_NAME"


def test_default_names_clone_names_and_ports() -> None:
    assert default_snapshot_name("web", 0).startswith("web-")
    assert clone_names("c", 1) == ["c"]
    assert clone_names("c", 3) == ["c-1", "c-2", "c-3"]
    with pytest.raises(ConfigError):
        clone_names("c", 0)
    maps = [PortMapping(8080, 80), PortMapping(9000, 22, "0.0.0.0")]
    assert clone_ports(maps, 0) == tuple(maps)
    assert clone_ports(maps, 2) == (PortMapping(8082, 80), PortMapping(9002, 22, "0.0.0.0"))
    with pytest.raises(ConfigError):
        clone_ports([PortMapping(65535, 80)], 1)


def test_new_identities_never_repeat() -> None:
    ids = [new_identity("c") for _ in range(50)]
    assert len({i.machine_id for i in ids}) == 50 and len({i.seed for i in ids}) == 50
    assert all(len(i.machine_id) == 32 and len(i.seed) == 32 for i in ids)
    int(ids[0].machine_id, 16)


# --------------------------------------------------------------- the agent's side


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path)
    try:
        yield a
    finally:
        a.stop()


def _fake_init(agent: Agent, lines: list[str], *, confirm: bool = True) -> threading.Thread:
    """Plays /init: reads one ctl line and confirms it like set_identity does."""

    def serve() -> None:
        fd = os.open(agent.ctl, os.O_RDONLY | os.O_NONBLOCK)
        try:
            data = b""
            deadline = time.monotonic() + 5
            while not data.endswith(b"\n") and time.monotonic() < deadline:
                try:
                    data += os.read(fd, 4096)
                except BlockingIOError:
                    time.sleep(0.005)
            lines.append(data.decode())
            _, host, mid, _seed, *net = data.decode().split()
            if confirm:
                (agent.root / "identity").write_text(" ".join([host, mid, *net]) + "\n")
        finally:
            os.close(fd)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    time.sleep(0.05)  # the reader must hold the FIFO open before the agent writes
    return thread


def test_identity_goes_to_init_and_is_answered_once_applied(agent: Agent) -> None:
    conn = agent.connect()
    seed = bytes(range(32))
    lines: list[str] = []
    thread = _fake_init(agent, lines)
    mid = "0123456789abcdef0123456789abcdef"
    conn.send(
        {
            "t": "identity",
            "id": 1,
            "hostname": "clone-1",
            "machine_id": mid,
            "seed": base64.b64encode(seed).decode(),
        }
    )
    reply = conn.expect(1)
    thread.join(5)
    assert reply["t"] == "identity", reply
    assert reply["hostname"] == "clone-1" and reply["machine_id"] == mid
    assert lines == [f"identity clone-1 {mid} {seed.hex()}\n"]
    conn.send({"t": "ping", "id": 2})
    assert conn.expect(2)["t"] == "pong"  # the session goes on
    conn.close()


def test_identity_with_net_readdresses_through_init(agent: Agent) -> None:
    """A TAP clone's MAC, address and gateway ride on the same ctl line to /init,
    and the reply (and so the host) sees them only once /init confirmed them."""
    conn = agent.connect()
    seed = bytes(range(32))
    lines: list[str] = []
    thread = _fake_init(agent, lines)
    mid = "fedcba9876543210fedcba9876543210"
    net = "52:54:00:0a:0b:0c,10.213.7.3/28,10.213.7.1"
    conn.send(
        {
            "t": "identity",
            "id": 1,
            "hostname": "tclone",
            "machine_id": mid,
            "seed": base64.b64encode(seed).decode(),
            "net": net,
        }
    )
    reply = conn.expect(1)
    thread.join(5)
    assert reply["t"] == "identity" and reply["net"] == net, reply
    assert lines == [f"identity tclone {mid} {seed.hex()} {net}\n"]
    conn.close()


_SEED = base64.b64encode(b"s" * 32).decode()


@pytest.mark.parametrize(
    "fields",
    [
        {"hostname": "ok", "machine_id": "0" * 32, "seed": _SEED, "net": "52:54:00:0a:0b:0c x"},
        {"hostname": "ok", "machine_id": "0" * 32, "seed": _SEED, "net": "1.2.3.4;reboot"},
        {"hostname": "ok", "machine_id": "0" * 32, "seed": _SEED, "net": "a" * 65},
        {"hostname": "ok", "machine_id": "0" * 32, "seed": _SEED, "net": 7},
        {"hostname": "bad host", "machine_id": "0" * 32, "seed": "AA=="},
        {"hostname": "-x", "machine_id": "0" * 32, "seed": base64.b64encode(b"s" * 32).decode()},
        {"hostname": "ok", "machine_id": "0" * 31, "seed": base64.b64encode(b"s" * 32).decode()},
        {"hostname": "ok", "machine_id": "A" * 32, "seed": base64.b64encode(b"s" * 32).decode()},
        {"hostname": "ok", "machine_id": "0" * 32, "seed": base64.b64encode(b"s" * 31).decode()},
        {"hostname": "ok", "machine_id": "0" * 32, "seed": "!" * 44},
        {"hostname": "ok", "machine_id": "0" * 32},
    ],
)
def test_identity_arguments_are_validated(agent: Agent, fields: dict[str, str]) -> None:
    conn = agent.connect()
    conn.send({"t": "identity", "id": 1, **fields})
    reply = conn.expect(1)
    assert reply["t"] == "error" and reply["code"] == "E_IDENTITY_ARGS", reply
    conn.close()


def test_identity_without_init_is_a_coded_error(agent: Agent) -> None:
    conn = agent.connect()
    seed = base64.b64encode(b"s" * 32).decode()
    conn.send({"t": "identity", "id": 1, "hostname": "a", "machine_id": "0" * 32, "seed": seed})
    reply = conn.expect(1)
    assert reply["t"] == "error" and reply["code"] == "E_CTL", reply
    conn.close()


def _alive(pid: int) -> bool:
    """Running and not a zombie (the process may be reaped between any two reads)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return not fh.read().split(") ")[1].startswith("Z")
    except OSError:
        return False


def test_host_hello_drops_streams_and_greets_again(agent: Agent) -> None:
    conn: Frames = agent.connect()
    conn.send({"t": "exec", "id": 5, "argv": ["sleep", "30"]})
    started = conn.expect(5)
    assert started["t"] == "started"
    conn.send({"t": "hello", "id": 0})
    hello = conn.expect(0)
    assert hello["t"] == "hello" and hello["v"] == 1
    # The stream of the "previous host" is gone: its process was killed and the id is free.
    deadline = time.monotonic() + 5
    while _alive(started["pid"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(started["pid"]), "the previous host's process still runs"
    conn.send({"t": "exec", "id": 5, "argv": ["true"]})
    assert conn.expect(5)["t"] == "started"
    conn.close()
