"""The QMP client against a scripted QMP server on a real Unix socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream

from mvm.backends.qemu.qmp import QmpClient
from mvm.engine.base.errors import BackendError

GREETING = {"QMP": {"version": {"qemu": {"major": 7, "minor": 2, "micro": 0}}, "capabilities": []}}

Script = Callable[["Peer"], Awaitable[None]]


class Peer:
    """The server side of one QMP connection, driven by a test script."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.received: list[dict[str, Any]] = []

    async def send(self, msg: dict[str, Any]) -> None:
        await self.stream.send(json.dumps(msg).encode() + b"\r\n")

    async def recv(self) -> dict[str, Any]:
        msg: dict[str, Any] = json.loads(await self.reader.receive_until(b"\n", 1 << 20))
        self.received.append(msg)
        return msg

    async def negotiate(self) -> None:
        await self.send(GREETING)
        msg = await self.recv()
        assert msg["execute"] == "qmp_capabilities"
        await self.send({"return": {}, "id": msg["id"]})


@asynccontextmanager
async def qmp_server(tmp_path: Path, script: Script) -> AsyncIterator[tuple[Path, list[Peer]]]:
    path = tmp_path / "qmp.sock"
    peers: list[Peer] = []
    listener = await anyio.create_unix_listener(path)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        peer = Peer(stream)
        peers.append(peer)
        async with stream:
            with suppress(anyio.EndOfStream, anyio.BrokenResourceError, anyio.IncompleteRead):
                await script(peer)

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield path, peers
        tg.cancel_scope.cancel()


def event(name: str, **data: Any) -> dict[str, Any]:
    return {"event": name, "data": data, "timestamp": {"seconds": 1, "microseconds": 2}}


async def test_greeting_capabilities_and_command(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.negotiate()
        msg = await peer.recv()
        await peer.send({"return": {"status": "running", "running": True}, "id": msg["id"]})
        await anyio.sleep(1)

    async with qmp_server(tmp_path, script) as (path, peers):
        async with QmpClient.connect(path) as qmp:
            assert qmp.greeting["version"]["qemu"]["major"] == 7
            result = await qmp.execute("query-status")
        assert result == {"status": "running", "running": True}
        sent = peers[0].received
        assert [m["execute"] for m in sent] == ["qmp_capabilities", "query-status"]
        assert "arguments" not in sent[1]
        assert sent[0]["id"] != sent[1]["id"]


async def test_arguments_are_sent_and_non_object_returns_are_wrapped(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.negotiate()
        msg = await peer.recv()
        await peer.send({"return": [{"cpu-index": 0}], "id": msg["id"]})
        await anyio.sleep(1)

    async with qmp_server(tmp_path, script) as (path, peers):
        async with QmpClient.connect(path) as qmp:
            result = await qmp.execute("migrate", {"uri": "exec:cat > /x"})
        assert result == {"return": [{"cpu-index": 0}]}
        assert peers[0].received[1]["arguments"] == {"uri": "exec:cat > /x"}


async def test_error_surfaces_qemu_desc_as_backend_error(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.negotiate()
        msg = await peer.recv()
        desc = "Could not open '/nope': No such file or directory"
        await peer.send({"error": {"class": "GenericError", "desc": desc}, "id": msg["id"]})
        await anyio.sleep(1)

    async with qmp_server(tmp_path, script) as (path, _), QmpClient.connect(path) as qmp:
        with pytest.raises(BackendError) as err:
            await qmp.execute("blockdev-add", {"node-name": "x"})
    assert err.value.code == "E_QMP"
    assert "Could not open '/nope': No such file or directory" in err.value.message
    assert "\n" not in err.value.one_line()


async def test_events_interleaved_with_replies_are_collected(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.send(GREETING)
        msg = await peer.recv()
        await peer.send(event("RTC_CHANGE", offset=0))  # before the capabilities reply
        await peer.send({"return": {}, "id": msg["id"]})
        msg = await peer.recv()
        await peer.send(event("STOP"))
        await peer.send({"return": {}, "id": msg["id"]})
        msg = await peer.recv()
        await peer.send({"return": {}, "id": msg["id"]})
        await anyio.sleep(0.05)
        await peer.send(event("RESUME"))
        await peer.send(event("SHUTDOWN", guest=True, reason="guest-shutdown"))
        await anyio.sleep(1)

    async with qmp_server(tmp_path, script) as (path, _), QmpClient.connect(path) as qmp:
        assert await qmp.execute("stop") == {}
        assert [e["event"] for e in qmp.events] == ["RTC_CHANGE", "STOP"]
        await qmp.execute("cont")
        shutdown = await qmp.wait_event("SHUTDOWN", timeout=5)
        assert shutdown["data"]["reason"] == "guest-shutdown"
        # RESUME arrived first and was kept; an already-received event is found at once.
        assert [e["event"] for e in qmp.events] == ["RTC_CHANGE", "STOP", "RESUME"]
        stop = await qmp.wait_event("STOP", timeout=0.01)
        assert stop["event"] == "STOP"


async def test_stale_reply_with_other_id_is_skipped(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.negotiate()
        msg = await peer.recv()
        await peer.send({"return": {"stale": True}, "id": 999})
        await peer.send({"return": {"fresh": True}, "id": msg["id"]})
        await anyio.sleep(1)

    async with qmp_server(tmp_path, script) as (path, _), QmpClient.connect(path) as qmp:
        assert await qmp.execute("query-status") == {"fresh": True}


async def test_connection_closed_mid_command(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.negotiate()
        await peer.recv()  # and hang up without answering

    async with qmp_server(tmp_path, script) as (path, _), QmpClient.connect(path) as qmp:
        with pytest.raises(BackendError) as err:
            await qmp.execute("quit")
    assert err.value.code == "E_QMP_CLOSED"


async def test_no_reply_times_out(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.negotiate()
        await peer.recv()
        await anyio.sleep(5)

    async with qmp_server(tmp_path, script) as (path, _), QmpClient.connect(path) as qmp:
        with pytest.raises(BackendError) as err:
            await qmp.execute("query-migrate", timeout=0.1)
    assert err.value.code == "E_QMP_TIMEOUT"


async def test_not_a_qmp_server(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.send({"hello": "world"})
        await anyio.sleep(1)

    async with qmp_server(tmp_path, script) as (path, _):
        with pytest.raises(BackendError) as err:
            async with QmpClient.connect(path):
                pass
    assert err.value.code == "E_QMP_PROTOCOL"


async def test_garbage_line_is_a_protocol_error(tmp_path: Path) -> None:
    async def script(peer: Peer) -> None:
        await peer.stream.send(b"{not json\r\n")
        await anyio.sleep(1)

    async with qmp_server(tmp_path, script) as (path, _):
        with pytest.raises(BackendError) as err:
            async with QmpClient.connect(path):
                pass
    assert err.value.code == "E_QMP_PROTOCOL"


async def test_missing_socket_is_a_connect_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as err:
        async with QmpClient.connect(tmp_path / "absent.sock"):
            pass
    assert err.value.code == "E_QMP_CONNECT"
