"""The agent-language bench's Python agent speaks the real framing (host side, no VM).

The agent runs as a real process on one end of a socketpair (``--fd``), and the
host end is read with mvm's own codec, so a framing drift from PROTOCOL.md shows
here before it spoils a benchmark boot.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mvm.backends.guest.protocol import MAX_FRAME, decode_body, encode_frame
from mvm.bench.agent_language import AGENT_PY, launcher_script, parse_status


class Peer:
    """The host end of the socketpair plus the agent process."""

    def __init__(self, sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
        self.sock = sock
        self.proc = proc

    def raw_frame(self) -> tuple[int, bytes]:
        header = self.sock.recv(4, socket.MSG_WAITALL)
        assert len(header) == 4, "connection ended before a frame header"
        (length,) = struct.unpack(">I", header)
        body = self.sock.recv(length, socket.MSG_WAITALL)
        assert len(body) == length
        return length, body

    def frame(self) -> dict[str, Any]:
        return decode_body(self.raw_frame()[1])

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode_frame(message))

    def until(self, ident: int, last: str) -> list[dict[str, Any]]:
        frames = []
        while True:
            msg = self.frame()
            assert msg["id"] == ident
            frames.append(msg)
            if msg["t"] in (last, "error"):
                return frames


def _start(*extra: str) -> Iterator[Peer]:
    host, guest = socket.socketpair()
    host.settimeout(10)
    proc = subprocess.Popen(
        [sys.executable, "-s", "-S", str(AGENT_PY), "--fd", str(guest.fileno()), *extra],
        pass_fds=[guest.fileno()],
        stderr=subprocess.PIPE,
    )
    guest.close()
    try:
        yield Peer(host, proc)
    finally:
        host.close()
        try:
            proc.wait(timeout=5)
        finally:
            proc.kill()
            proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()


@pytest.fixture
def agent() -> Iterator[Peer]:
    yield from _start()


@pytest.fixture
def sealed_agent() -> Iterator[Peer]:
    yield from _start("--sealed")


def test_hello_is_one_well_formed_frame(agent: Peer) -> None:
    length, body = agent.raw_frame()
    assert 1 <= length <= MAX_FRAME
    hello = decode_body(body)
    assert hello["t"] == "hello" and hello["id"] == 0 and hello["v"] == 1
    assert hello["agent"].startswith("mvm-agent-py/")
    assert hello["sealed"] is False
    assert hello["pid"] == agent.proc.pid
    assert isinstance(hello["uptime_ms"], int) and hello["uptime_ms"] > 0
    assert hello["hostname"] == os.uname().nodename
    agent.sock.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing after the hello until we ask
        agent.sock.recv(1)


def test_ping_pong_and_host_hello_regreets(agent: Peer) -> None:
    agent.frame()
    agent.send({"t": "ping", "id": 7})
    pong = agent.frame()
    assert pong["t"] == "pong" and pong["id"] == 7 and isinstance(pong["uptime_ms"], int)
    agent.send({"t": "hello", "id": 0})
    assert agent.frame()["t"] == "hello"


def test_frames_split_into_single_bytes_are_reassembled(agent: Peer) -> None:
    agent.frame()
    for byte in encode_frame({"t": "ping", "id": 3}) + encode_frame({"t": "ping", "id": 4}):
        agent.sock.send(bytes([byte]))
    assert [agent.frame()["id"], agent.frame()["id"]] == [3, 4]


def test_exec_streams_output_and_exit(agent: Peer) -> None:
    agent.frame()
    agent.send({"t": "exec", "id": 5, "argv": ["sh", "-c", "echo out; echo err >&2; exit 3"]})
    frames = agent.until(5, "exit")
    assert frames[0]["t"] == "started" and frames[0]["pid"] > 0
    data = {f["fd"]: base64.b64decode(f["data"]) for f in frames if f["t"] == "data"}
    assert data == {1: b"out\n", 2: b"err\n"}
    assert frames[-1] == {"t": "exit", "id": 5, "code": 3, "signal": None}


def test_errors_use_the_protocol_codes(agent: Peer) -> None:
    agent.frame()
    agent.send({"t": "frobnicate", "id": 9})
    assert agent.frame()["code"] == "E_PROTO_UNKNOWN"
    agent.send({"t": "ping", "id": 0})
    assert agent.frame()["code"] == "E_PROTO_ID"
    agent.send({"t": "exec", "id": 10, "argv": ["/nonexistent/prog"]})
    err = agent.frame()
    assert err["t"] == "error" and err["code"] == "E_EXEC" and err["id"] == 10


def test_sealed_agent_refuses_exec(sealed_agent: Peer) -> None:
    assert sealed_agent.frame()["sealed"] is True
    sealed_agent.send({"t": "exec", "id": 1, "argv": ["true"]})
    assert sealed_agent.frame()["code"] == "E_SEALED"


def test_oversized_frame_closes_the_connection(agent: Peer) -> None:
    agent.frame()
    agent.sock.sendall(struct.pack(">I", MAX_FRAME + 1) + b"{}")
    assert agent.sock.recv(1) == b""
    assert agent.proc.wait(timeout=5) == 0


def test_launcher_routes_multicall_roles_to_the_c_agent(tmp_path: Path) -> None:
    """setpriv/reseed must reach the C binary (/init uses them); the rest runs python."""
    script = launcher_script("/usr/bin/python3.11")
    script = script.replace("/usr/lib/mvm/mvm-agent-c", "echo C").replace(
        "/usr/bin/python3.11", "echo PY"
    )
    launcher = tmp_path / "mvm-agent"
    launcher.write_text(script)
    launcher.chmod(0o755)

    def run(*args: str) -> str:
        return subprocess.run(
            [str(launcher), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert run("setpriv", "--reuid=990", "x") == "C setpriv --reuid=990 x"
    assert run("reseed", "ab") == "C reseed ab"
    assert run("--serial", "/dev/vport0p1") == (
        "PY -s -S /usr/lib/mvm/agent_py.py --serial /dev/vport0p1"
    )


def test_parse_status_reads_real_proc_files() -> None:
    text = Path("/proc/self/status").read_text() + Path("/proc/meminfo").read_text()
    fields = parse_status(text)
    assert fields["VmRSS"] > 0 and fields["VmHWM"] >= fields["VmRSS"]
    assert fields["GuestUsed"] > 0
