"""The guest agent (static C) as a host process, spoken to over raw frames.

The framing helper lives here on purpose: these tests pin the wire protocol
(PROTOCOL.md) independently of the host client, so a bug cannot hide by being
the same on both ends. Each test starts its own agent (it is up in ~2 ms).
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvm.backends.guest.build import agent_binary

WINDOW = 1024 * 1024
CHUNK = 64 * 1024
MAX_FRAME = 256 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Frames:
    """A blocking frame connection with a receive timeout (the test's own client)."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(json.dumps(message).encode())

    def send_raw(self, body: bytes, length: int | None = None) -> None:
        n = len(body) if length is None else length
        self.sock.sendall(struct.pack(">I", n) + body)

    def _fill(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def recv(self) -> dict[str, Any] | None:
        """The next frame, or None when the agent closed the connection."""
        if not self._fill(4):
            return None
        (n,) = struct.unpack(">I", self.buf[:4])
        assert 1 <= n <= MAX_FRAME
        if not self._fill(4 + n):
            return None
        body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
        message = json.loads(body)
        assert isinstance(message, dict) and isinstance(message["t"], str)
        return message

    def expect(self, ident: int | None = None) -> dict[str, Any]:
        """The next frame for ``ident`` (unsolicited id-0 events are skipped)."""
        while True:
            message = self.recv()
            assert message is not None, "agent closed the connection"
            if ident is None or message["id"] == ident:
                return message

    def closed_by_agent(self) -> bool:
        try:
            while True:
                if self.recv() is None:
                    return True
        except (ConnectionResetError, TimeoutError):
            return False

    def exec(
        self, ident: int, argv: list[str], **fields: Any
    ) -> tuple[bytes, bytes, dict[str, Any]]:
        """Run to completion, acking output; returns stdout, stderr and the exit frame."""
        self.send({"t": "exec", "id": ident, "argv": argv, **fields})
        started = self.expect(ident)
        assert started["t"] == "started" and started["pid"] > 0, started
        out = {1: bytearray(), 2: bytearray()}
        while True:
            message = self.expect(ident)
            if message["t"] == "exit":
                return bytes(out[1]), bytes(out[2]), message
            assert message["t"] == "data", message
            data = base64.b64decode(message["data"])
            assert len(data) <= CHUNK
            out[message["fd"]] += data
            self.send({"t": "ack", "id": ident, "n": len(data)})


def exchange(conn: Frames, payloads: dict[int, bytes], timeout: float = 20.0) -> dict[int, bytes]:
    """Stream payloads on many ids at once (window-limited) while echo data comes back.

    Runs both directions in one non-blocking loop, as the real host does, so a
    missing ack on either side shows up as a stall (timeout), not a pass.
    """
    sock = conn.sock
    sock.setblocking(False)
    sent = dict.fromkeys(payloads, 0)
    unacked = dict.fromkeys(payloads, 0)
    got = {i: bytearray() for i in payloads}
    out = bytearray()
    inbuf = bytearray(conn.buf)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    deadline = time.monotonic() + timeout
    try:
        while any(len(got[i]) < len(p) for i, p in payloads.items()):
            assert time.monotonic() < deadline, "stream stalled"
            for ident, payload in payloads.items():
                while len(out) < 4 * CHUNK and sent[ident] < len(payload):
                    piece = payload[sent[ident] : sent[ident] + CHUNK]
                    if unacked[ident] + len(piece) > WINDOW:
                        break
                    body = json.dumps(
                        {"t": "data", "id": ident, "data": base64.b64encode(piece).decode()}
                    ).encode()
                    out += struct.pack(">I", len(body)) + body
                    sent[ident] += len(piece)
                    unacked[ident] += len(piece)
            for _key, events in sel.select(0.5):
                if events & selectors.EVENT_WRITE and out:
                    try:
                        n = sock.send(out)
                        del out[:n]
                    except BlockingIOError:
                        pass
                if events & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(1 << 20)
                    except BlockingIOError:
                        chunk = b""
                    else:
                        assert chunk, "agent closed the connection"
                    inbuf += chunk
            while len(inbuf) >= 4:
                (n,) = struct.unpack(">I", inbuf[:4])
                if len(inbuf) < 4 + n:
                    break
                message = json.loads(inbuf[4 : 4 + n])
                del inbuf[: 4 + n]
                ident = message["id"]
                if message["t"] == "ack":
                    unacked[ident] -= message["n"]
                    assert unacked[ident] >= 0
                elif message["t"] == "data":
                    data = base64.b64decode(message["data"])
                    got[ident] += data
                    body = json.dumps({"t": "ack", "id": ident, "n": len(data)}).encode()
                    out += struct.pack(">I", len(body)) + body
                else:
                    raise AssertionError(f"unexpected frame {message}")
        sock.setblocking(True)
        while out:
            n = sock.send(out)
            del out[:n]
    finally:
        sel.close()
        sock.setblocking(True)
        sock.settimeout(5.0)
    conn.buf = bytes(inbuf)
    return {i: bytes(b) for i, b in got.items()}


class Agent:
    def __init__(self, root: Path, *, sealed: bool = False) -> None:
        self.root = root
        self.port = _free_port()
        self.health = root / "health"
        self.logs = root / "logs"
        self.ctl = root / "ctl"
        self.health.mkdir(exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        os.mkfifo(self.ctl)
        argv = [
            str(agent_binary()),
            "--tcp-listen",
            f"127.0.0.1:{self.port}",
            "--health-dir",
            str(self.health),
            "--log-dir",
            str(self.logs),
            "--ctl",
            str(self.ctl),
        ]
        if sealed:
            argv.append("--sealed")
        argv += self.extra_args()
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE)

    def extra_args(self) -> list[str]:
        """More agent flags (test_guest_spawn adds --spawn)."""
        return []

    def connect(self) -> Frames:
        conn = Frames(self.port)
        hello = conn.expect(0)
        assert hello["t"] == "hello"
        return conn

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stderr is not None
        self.proc.stderr.close()


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    a = Agent(tmp_path)
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture
def conn(agent: Agent) -> Iterator[Frames]:
    c = agent.connect()
    try:
        yield c
    finally:
        c.close()


class EchoServer:
    """A threaded TCP echo server (or a firehose that only sends ``blast`` bytes)."""

    def __init__(self, blast: bytes | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.blast = blast
        self.accepted = 0
        self.sent = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with client:
            try:
                if self.blast is not None:
                    view = memoryview(self.blast)
                    while view:
                        n = client.send(view[:CHUNK])
                        self.sent += n
                        view = view[n:]
                    client.shutdown(socket.SHUT_WR)
                    while client.recv(65536):
                        pass
                    return
                while data := client.recv(65536):
                    client.sendall(data)
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


# ----------------------------------------------------------------------- hello & basics


def test_hello_fields_and_ping(agent: Agent) -> None:
    started = time.monotonic()
    conn = Frames(agent.port)
    hello = conn.expect()
    elapsed = time.monotonic() - started
    assert hello["t"] == "hello" and hello["id"] == 0 and hello["v"] == 1
    assert hello["agent"].startswith("mvm-agent/")
    assert hello["sealed"] is False
    assert hello["pid"] == agent.proc.pid
    assert hello["hostname"] == socket.gethostname()
    machine_id = Path("/etc/machine-id")
    expected = machine_id.read_text().strip() if machine_id.exists() else ""
    assert hello["machine_id"] == expected
    assert isinstance(hello["uptime_ms"], int) and hello["uptime_ms"] > 0
    assert elapsed < 2.0
    conn.send({"t": "ping", "id": 7})
    pong = conn.expect(7)
    assert pong["t"] == "pong" and pong["uptime_ms"] >= hello["uptime_ms"]
    conn.send({"t": "frobnicate", "id": 8})
    err = conn.expect(8)
    assert err["t"] == "error" and err["code"] == "E_PROTO_UNKNOWN"
    conn.close()


def test_each_connection_is_its_own_session(agent: Agent) -> None:
    a, b = agent.connect(), agent.connect()
    a.send({"t": "ping", "id": 1})
    b.send({"t": "ping", "id": 1})
    assert a.expect(1)["t"] == "pong" and b.expect(1)["t"] == "pong"
    a.close()
    b.send({"t": "ping", "id": 2})
    assert b.expect(2)["t"] == "pong"
    b.close()


# ----------------------------------------------------------------------- exec


def test_exec_stdout_stderr_and_exit_code(conn: Frames) -> None:
    out, err, exit_ = conn.exec(1, ["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (out, err) == (b"out\n", b"err\n")
    assert exit_["code"] == 3 and exit_["signal"] is None


def test_exec_env_cwd_and_unicode(conn: Frames, tmp_path: Path) -> None:
    word = 'h\u00e9llo \u2603 \U0001f600 "q" \\'
    out, _, exit_ = conn.exec(
        1,
        ["sh", "-c", 'printf "%s|%s|" "$MVM_T" "$PWD"; printf "%s" "$1"', "sh", word],
        env={"MVM_T": "v=1"},
        cwd=str(tmp_path),
    )
    assert exit_["code"] == 0
    assert out.decode() == f"v=1|{tmp_path}|{word}"


def test_exec_output_larger_than_window_then_exit_last(conn: Frames) -> None:
    size = 3 * WINDOW + 12345
    out, _, exit_ = conn.exec(1, ["head", "-c", str(size), "/dev/urandom"])
    assert len(out) == size and exit_["code"] == 0


def test_exec_output_stops_without_acks(conn: Frames) -> None:
    conn.send({"t": "exec", "id": 1, "argv": ["head", "-c", str(4 * WINDOW), "/dev/zero"]})
    assert conn.expect(1)["t"] == "started"
    received = 0
    conn.sock.settimeout(0.5)
    try:
        while True:
            message = conn.expect(1)
            assert message["t"] == "data"
            received += len(base64.b64decode(message["data"]))
    except TimeoutError:
        pass
    assert received == WINDOW  # a full window, and not a byte more
    conn.sock.settimeout(5.0)
    conn.send({"t": "ack", "id": 1, "n": received})
    total = received
    while True:
        message = conn.expect(1)
        if message["t"] == "exit":
            break
        data = base64.b64decode(message["data"])
        total += len(data)
        conn.send({"t": "ack", "id": 1, "n": len(data)})
    assert total == 4 * WINDOW and message["code"] == 0


def test_exec_missing_program_is_an_error(conn: Frames) -> None:
    conn.send({"t": "exec", "id": 1, "argv": ["/nonexistent/prog"]})
    err = conn.expect(1)
    assert err["t"] == "error" and err["code"] == "E_EXEC" and "No such file" in err["message"]
    conn.send({"t": "exec", "id": 2, "argv": []})
    assert conn.expect(2)["code"] == "E_EXEC_ARGS"


def test_exec_kill_reports_the_signal(conn: Frames) -> None:
    conn.send({"t": "exec", "id": 1, "argv": ["sleep", "30"]})
    assert conn.expect(1)["t"] == "started"
    conn.send({"t": "kill", "id": 1, "sig": 9})
    exit_ = conn.expect(1)
    assert exit_["t"] == "exit" and exit_["signal"] == 9 and exit_["code"] is None


def test_exec_close_kills_the_process(conn: Frames) -> None:
    conn.send({"t": "exec", "id": 1, "argv": ["sleep", "30"]})
    pid = conn.expect(1)["pid"]
    conn.send({"t": "close", "id": 1})
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists():  # killed and reaped: no zombie either
        assert time.monotonic() < deadline, "exec'd process survived close"
        time.sleep(0.01)


def test_exec_stdin_streaming(conn: Frames) -> None:
    payload = os.urandom(2 * WINDOW + 777)
    conn.send({"t": "exec", "id": 1, "argv": ["sha256sum"], "stdin": True})
    assert conn.expect(1)["t"] == "started"
    acked = 0
    view = memoryview(payload)
    while view:
        piece, view = bytes(view[:CHUNK]), view[CHUNK:]
        while acked + WINDOW < len(payload) - len(view):  # keep within the window
            ack = conn.expect(1)
            assert ack["t"] == "ack"
            acked += ack["n"]
        conn.send({"t": "data", "id": 1, "fd": 0, "data": base64.b64encode(piece).decode()})
    conn.send({"t": "eof", "id": 1})
    out = b""
    while True:
        message = conn.expect(1)
        if message["t"] == "exit":
            break
        if message["t"] == "data":
            out += base64.b64decode(message["data"])
    import hashlib

    assert out.split()[0].decode() == hashlib.sha256(payload).hexdigest()
    assert message["code"] == 0


def test_exec_without_stdin_reads_dev_null(conn: Frames) -> None:
    out, _, exit_ = conn.exec(1, ["sh", "-c", "cat; echo done"])
    assert out == b"done\n" and exit_["code"] == 0


def test_exec_pty(conn: Frames) -> None:
    conn.send(
        {
            "t": "exec",
            "id": 1,
            "argv": ["sh", "-c", "test -t 0 && stty size && read x && echo got=$x"],
            "pty": True,
            "rows": 33,
            "cols": 101,
        }
    )
    assert conn.expect(1)["t"] == "started"
    conn.send({"t": "data", "id": 1, "fd": 0, "data": base64.b64encode(b"abc\n").decode()})
    out = b""
    while True:
        message = conn.expect(1)
        if message["t"] == "exit":
            break
        if message["t"] == "data":
            assert message["fd"] == 1
            out += base64.b64decode(message["data"])
            conn.send({"t": "ack", "id": 1, "n": len(base64.b64decode(message["data"]))})
    assert b"33 101" in out and b"got=abc" in out
    assert message["code"] == 0


def test_exec_pty_resize(conn: Frames) -> None:
    conn.send({"t": "exec", "id": 1, "argv": ["sh", "-c", "read x; stty size"], "pty": True})
    assert conn.expect(1)["t"] == "started"
    conn.send({"t": "resize", "id": 1, "rows": 50, "cols": 132})
    conn.send({"t": "data", "id": 1, "fd": 0, "data": base64.b64encode(b"\n").decode()})
    out = b""
    while (message := conn.expect(1))["t"] != "exit":
        out += base64.b64decode(message.get("data", ""))
    assert b"50 132" in out


def test_sealed_refuses_exec(tmp_path: Path) -> None:
    sealed = Agent(tmp_path, sealed=True)
    try:
        conn = sealed.connect()
        conn.send({"t": "exec", "id": 1, "argv": ["id"]})
        err = conn.expect(1)
        assert err["t"] == "error" and err["code"] == "E_SEALED"
        conn.send({"t": "ping", "id": 2})
        assert conn.expect(2)["t"] == "pong"
        conn.close()
    finally:
        sealed.stop()


# ----------------------------------------------------------------------- connect


def test_connect_five_mib_byte_exact(conn: Frames) -> None:
    echo = EchoServer()
    try:
        conn.send({"t": "connect", "id": 1, "port": echo.port})
        assert conn.expect(1)["t"] == "ok"
        payload = os.urandom(5 * 1024 * 1024)
        got = exchange(conn, {1: payload})
        assert got[1] == payload
        conn.send({"t": "eof", "id": 1})
        assert conn.expect(1)["t"] == "eof"  # the echo server saw our eof and closed
        assert conn.expect(1)["t"] == "close"
    finally:
        echo.close()


def test_connect_stops_reading_without_acks(conn: Frames) -> None:
    blast = os.urandom(16 * WINDOW)  # more than loopback socket buffers can hide
    server = EchoServer(blast=blast)
    try:
        conn.send({"t": "connect", "id": 1, "port": server.port})
        assert conn.expect(1)["t"] == "ok"
        received = bytearray()
        conn.sock.settimeout(0.5)
        try:
            while True:
                message = conn.expect(1)
                assert message["t"] == "data"
                received += base64.b64decode(message["data"])
        except TimeoutError:
            pass
        assert len(received) == WINDOW  # a full window, and not a byte more
        assert server.sent < len(blast)  # the guest socket is not drained into memory
        conn.sock.settimeout(5.0)
        conn.send({"t": "ack", "id": 1, "n": len(received)})
        while len(received) < 3 * WINDOW:  # acks resume the flow
            message = conn.expect(1)
            data = base64.b64decode(message["data"])
            received += data
            conn.send({"t": "ack", "id": 1, "n": len(data)})
        assert bytes(received) == blast[: len(received)]
        conn.send({"t": "close", "id": 1})
        conn.send({"t": "ping", "id": 2})
        while (message := conn.expect())["id"] == 1:
            assert message["t"] == "data"  # already queued before the close
        assert message == {"t": "pong", "id": 2, "uptime_ms": message["uptime_ms"]}
    finally:
        server.close()


def test_hundred_concurrent_connect_streams(conn: Frames) -> None:
    echo = EchoServer()
    try:
        ids = range(1, 101)
        for i in ids:
            conn.send({"t": "connect", "id": i, "port": echo.port})
        oks = {conn.expect()["id"] for _ in ids}
        assert oks == set(ids)
        payloads = {i: os.urandom(20_000 + 131 * i) for i in ids}
        got = exchange(conn, payloads)
        assert got == payloads
        assert echo.accepted == 100
        for i in ids:
            conn.send({"t": "close", "id": i})
        conn.send({"t": "ping", "id": 1000})
        assert conn.expect(1000)["t"] == "pong"
    finally:
        echo.close()


def test_connect_refused_is_coded(conn: Frames) -> None:
    conn.send({"t": "connect", "id": 1, "port": _free_port()})
    err = conn.expect(1)
    assert err["t"] == "error" and err["code"] == "E_CONNECT"
    assert "refused" in err["message"].lower()


# ----------------------------------------------------------------------- health


def _write_check(agent: Agent, name: str, cmd: str, interval: str, timeout: str) -> None:
    """Staged and renamed into place, as an image ships it: the agent never sees half a check."""
    d = agent.root / f"stage-{name}"
    d.mkdir()
    (d / "cmd").write_text(cmd + "\n")
    (d / "interval").write_text(interval + "\n")
    (d / "timeout").write_text(timeout + "\n")
    d.rename(agent.health / name)


def test_health_checks_run_and_push_changes(agent: Agent) -> None:
    conn = agent.connect()  # first, so that it sees every change pushed
    _write_check(agent, "good", "true", "0.2", "1")
    _write_check(agent, "bad", "exit 4", "0.2", "1")
    _write_check(agent, "slow", "sleep 5", "0.2", "0.2")
    _write_check(agent, "later", "sleep 2", "3600", "5")
    changes: dict[str, str] = {}
    deadline = time.monotonic() + 5
    services: dict[str, Any] = {}
    ident = 1
    while time.monotonic() < deadline:
        conn.send({"t": "health", "id": ident})
        while True:
            message = conn.expect()
            if message["t"] == "health_changed":
                changes[message["service"]] = message["status"]
                continue
            assert message["id"] == ident and message["t"] == "health"
            services = message["services"]
            break
        ident += 1
        if services.get("bad", {}).get("failures", 0) >= 2 and "slow" in changes:
            break
        time.sleep(0.1)
    assert services["good"]["status"] == "healthy" and services["good"]["rc"] == 0
    assert services["good"]["failures"] == 0
    assert services["bad"]["status"] == "unhealthy" and services["bad"]["rc"] == 4
    assert services["bad"]["failures"] >= 2  # consecutive failures accumulate
    assert services["slow"]["status"] == "unhealthy" and services["slow"]["rc"] == 124
    assert isinstance(services["bad"]["checked_uptime_ms"], int)
    assert changes == {"good": "healthy", "bad": "unhealthy", "slow": "unhealthy"}
    assert services["later"]["status"] == "unknown" and services["later"]["rc"] is None
    conn.close()


def test_health_unknown_before_first_run(agent: Agent) -> None:
    conn = agent.connect()
    conn.send({"t": "health", "id": 1})
    assert conn.expect(1)["services"] == {}
    _write_check(agent, "svc", "sleep 2", "10", "5")
    conn.send({"t": "health", "id": 2})
    svc = conn.expect(2)["services"]["svc"]
    assert svc == {"status": "unknown", "rc": None, "checked_uptime_ms": None, "failures": 0}
    conn.close()


# ----------------------------------------------------------------------- logs


def _logs(conn: Frames, ident: int, **fields: Any) -> list[tuple[str, str]]:
    conn.send({"t": "logs", "id": ident, **fields})
    lines = []
    while (message := conn.expect(ident))["t"] == "log":
        lines.append((message["service"], message["line"]))
    assert message["t"] == "end"
    return lines


def test_logs_one_service_and_all(agent: Agent, conn: Frames) -> None:
    (agent.logs / "web.log").write_bytes(b"line one\nline two\r\nbad \xff byte\nno newline")
    (agent.logs / "db.log").write_text("db up\n")
    (agent.logs / "notes.txt").write_text("ignored\n")
    assert _logs(conn, 1, service="web") == [
        ("web", "line one"),
        ("web", "line two"),
        ("web", "bad \ufffd byte"),
        ("web", "no newline"),
    ]
    assert _logs(conn, 2) == [
        ("db", "db up"),
        ("web", "line one"),
        ("web", "line two"),
        ("web", "bad \ufffd byte"),
        ("web", "no newline"),
    ]
    assert _logs(conn, 3, service="missing") == []
    conn.send({"t": "logs", "id": 4, "service": "../etc/passwd"})
    assert conn.expect(4)["code"] == "E_LOGS_ARGS"


def test_logs_large_file_streams_completely(agent: Agent, conn: Frames) -> None:
    lines = [f"{i:06d} " + "x" * 100 for i in range(40_000)]  # ~4 MiB
    (agent.logs / "big.log").write_text("\n".join(lines) + "\n")
    got = _logs(conn, 1, service="big")
    assert [line for _, line in got] == lines


def test_logs_follow(agent: Agent, conn: Frames) -> None:
    log = agent.logs / "web.log"
    log.write_text("first\n")
    conn.send({"t": "logs", "id": 1, "service": "web", "follow": True})
    assert conn.expect(1) == {"t": "log", "id": 1, "service": "web", "line": "first"}
    with log.open("a") as f:
        f.write("second\npart")
    assert conn.expect(1)["line"] == "second"
    with log.open("a") as f:
        f.write("ial\n")
    assert conn.expect(1)["line"] == "partial"
    conn.send({"t": "close", "id": 1})
    with log.open("a") as f:
        f.write("after close\n")
    conn.send({"t": "ping", "id": 2})
    time.sleep(0.3)
    assert conn.expect()["t"] == "pong"  # nothing more on id 1


# ----------------------------------------------------------------------- ctl FIFO


def _ctl_reader(agent: Agent) -> int:
    return os.open(agent.ctl, os.O_RDONLY | os.O_NONBLOCK)


def _read_ctl(fd: int) -> str:
    deadline = time.monotonic() + 2
    data = b""
    while not data.endswith(b"\n"):
        assert time.monotonic() < deadline
        try:
            data += os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.01)
    return data.decode()


def test_service_and_shutdown_write_the_ctl_fifo(agent: Agent, conn: Frames) -> None:
    fd = _ctl_reader(agent)
    try:
        conn.send({"t": "service", "id": 1, "name": "web", "action": "restart"})
        assert conn.expect(1)["t"] == "ok"
        assert _read_ctl(fd) == "restart web\n"
        conn.send({"t": "service", "id": 2, "name": "web", "action": "kill", "sig": 9})
        assert conn.expect(2)["t"] == "ok"
        assert _read_ctl(fd) == "kill web 9\n"
        conn.send({"t": "shutdown", "id": 3})
        assert conn.expect(3)["t"] == "ok"
        assert _read_ctl(fd) == "poweroff\n"
        conn.send({"t": "shutdown", "id": 4, "reboot": True})
        assert conn.expect(4)["t"] == "ok"
        assert _read_ctl(fd) == "reboot\n"
        bad_requests: list[dict[str, Any]] = [
            {"name": "web; rm -rf /", "action": "restart"},
            {"name": "web", "action": "explode"},
            {"name": "web", "action": "kill", "sig": 99},
        ]
        for ident, bad in enumerate(bad_requests, start=10):
            conn.send({"t": "service", "id": ident, **bad})
            assert conn.expect(ident)["code"] == "E_SERVICE_ARGS"
    finally:
        os.close(fd)


def test_ctl_without_init_is_an_error(conn: Frames) -> None:
    conn.send({"t": "shutdown", "id": 1})
    err = conn.expect(1)
    assert err["t"] == "error" and err["code"] == "E_CTL"


# ----------------------------------------------------------------------- robustness


@pytest.mark.parametrize(
    ("length", "body"),
    [
        (0, b""),
        (MAX_FRAME + 1, b"{}"),
        (None, b"[1,2,3]"),
        (None, b'{"t":1,"id":1}'),
        (None, b'{"t":"ping","id":-1}'),
        (None, b'{"t":"ping","id":"x"}'),
        (None, b'{"t":"ping","id":1'),
        (None, b'{"t":"ping","id":1} x'),
        (None, b"\xff\xfe"),
        (None, b'{"t":"data","id":1,"data":"not base64!"}'),
        (None, b"[" * 100_000),
    ],
)
def test_malformed_frames_close_only_that_session(
    agent: Agent, length: int | None, body: bytes
) -> None:
    bystander = agent.connect()
    conn = agent.connect()
    if body.startswith(b'{"t":"data"'):
        conn.send({"t": "exec", "id": 1, "argv": ["cat"], "stdin": True})
        assert conn.expect(1)["t"] == "started"
    conn.send_raw(body, length)
    assert conn.closed_by_agent()
    conn.close()
    bystander.send({"t": "ping", "id": 1})
    assert bystander.expect(1)["t"] == "pong"
    bystander.close()
    assert agent.proc.poll() is None


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=20)
)
_json = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_frames = st.one_of(
    st.binary(max_size=300),  # raw bytes: random headers and bodies
    _json.map(lambda v: struct.pack(">I", len(b := json.dumps(v).encode())) + b),
    st.fixed_dictionaries(
        {
            "t": st.sampled_from(
                [
                    "ping",
                    "exec",
                    "connect",
                    "data",
                    "ack",
                    "kill",
                    "logs",
                    "health",
                    "resize",
                    "eof",
                    "close",
                    "service",
                    "x",
                ]
            ),
            "id": st.integers(-3, 2**64),
        },
        optional={
            "argv": _json,
            "data": _json,
            "n": _json,
            "port": _json,
            "sig": _json,
            "service": _json,
            "follow": _json,
            "rows": _json,
            "env": _json,
        },
    ).map(lambda v: struct.pack(">I", len(b := json.dumps(v).encode())) + b),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frames=st.lists(_frames, min_size=1, max_size=6))
def test_fuzzed_frames_never_kill_the_agent(agent: Agent, frames: list[bytes]) -> None:
    conn = agent.connect()
    conn.sock.settimeout(0.05)  # a half frame leaves the agent waiting for the rest: fine
    try:
        for raw in frames:
            conn.sock.sendall(raw)
    except OSError:
        pass  # the agent already closed this session: fine
    try:  # read answers until the agent closes the session or our ping is answered
        conn.send({"t": "ping", "id": 424242})
        while (message := conn.recv()) is not None and message["id"] != 424242:
            pass
    except (OSError, json.JSONDecodeError):
        pass
    conn.close()
    assert agent.proc.poll() is None, "the agent died"
    fresh = agent.connect()  # and it still greets a new host
    fresh.send({"t": "ping", "id": 1})
    assert fresh.expect(1)["t"] == "pong"
    fresh.close()


def test_sigchld_leaves_no_zombies(conn: Frames, agent: Agent) -> None:
    for i in range(1, 21):
        conn.exec(i, ["true"])
    conn.send({"t": "exec", "id": 100, "argv": ["sh", "-c", "sleep 0.05 & exec true"]})
    while conn.expect(100)["t"] != "exit":
        pass
    time.sleep(0.2)
    children = [
        p for p in Path("/proc").iterdir() if p.name.isdigit() and _ppid(p) == agent.proc.pid
    ]
    assert children == [], [(_state(p), p) for p in children]


def _ppid(p: Path) -> int:
    try:
        stat = p.joinpath("stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def _state(p: Path) -> str:
    try:
        return p.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def test_host_disconnect_kills_its_processes(agent: Agent) -> None:
    conn = agent.connect()
    conn.send({"t": "exec", "id": 1, "argv": ["sleep", "30"]})
    pid = conn.expect(1)["pid"]
    conn.close()
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "process outlived its host session"
        time.sleep(0.01)
    other = agent.connect()
    other.send({"t": "ping", "id": 1})
    assert other.expect(1)["t"] == "pong"
    other.close()
