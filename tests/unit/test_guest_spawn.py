"""exec/console as the entrypoint's uid through `mvm-agent spawnd`, and `uids`.

The agent runs unprivileged in the guest; spawnd (root, started by /init on
accessible images) starts the process as the image's entrypoint uid on the fds
the agent hands it. Here both run as host processes: spawnd as this test's uid
(root in the CI container, so the uid drop to 1000 is real), the agent with
``--spawn``. Frames come from the raw-frame helper of test_guest_agent.
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mvm.backends.guest.build import agent_binary

from .test_guest_agent import Agent, Frames

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="dropping to another uid needs root")


class SpawnAgent(Agent):
    """An agent whose exec/console go through a spawnd running as ``uid``."""

    def __init__(self, root: Path, uid: int, *, sealed: bool = False) -> None:
        self.sock = root / "spawn.sock"
        self.run_dir = root / "run"
        (self.run_dir / "services").mkdir(parents=True)
        self.spawnd = subprocess.Popen(
            [str(agent_binary()), "spawnd", "--socket", str(self.sock), "--uid", str(uid)],
            stderr=subprocess.PIPE,
        )
        assert self.spawnd.stderr is not None
        line = self.spawnd.stderr.readline()  # "spawnd: serving PATH ...": it is listening
        assert b"spawnd: serving" in line, line
        super().__init__(root, sealed=sealed)

    def extra_args(self) -> list[str]:
        return [
            "--spawn",
            str(self.sock),
            "--console-shell",
            "/bin/sh",
            "--run-dir",
            str(self.run_dir),
        ]

    def stop(self) -> None:
        super().stop()
        self.spawnd.kill()
        self.spawnd.wait()
        assert self.spawnd.stderr is not None
        self.spawnd.stderr.close()


@pytest.fixture
def as1000(tmp_path: Path) -> Iterator[Frames]:
    agent = SpawnAgent(tmp_path, 1000)
    conn = agent.connect()
    try:
        yield conn
    finally:
        conn.close()
        agent.stop()


def _pty_until(conn: Frames, ident: int, needle: bytes, timeout: float = 10.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while needle not in out:
        assert time.monotonic() < deadline, out
        message = conn.expect(ident)
        if message["t"] == "ack":  # our stdin was consumed
            continue
        assert message["t"] == "data", message
        data = base64.b64decode(message["data"])
        out += data
        conn.send({"t": "ack", "id": ident, "n": len(data)})
    return out


def _type(conn: Frames, ident: int, text: bytes) -> None:
    conn.send({"t": "data", "id": ident, "fd": 0, "data": base64.b64encode(text).decode()})


def _drain_exit(conn: Frames, ident: int) -> dict[str, Any]:
    while True:
        message = conn.expect(ident)
        if message["t"] == "exit":
            return message
        if message["t"] == "ack":
            continue
        assert message["t"] == "data", message
        conn.send({"t": "ack", "id": ident, "n": len(base64.b64decode(message["data"]))})


@needs_root
def test_exec_runs_as_the_entrypoint_uid_with_no_new_privs(as1000: Frames) -> None:
    out, err, exit_ = as1000.exec(
        1, ["sh", "-c", "id -u; id -g; id -G; grep NoNewPrivs /proc/self/status; echo $HOME"]
    )
    assert exit_["code"] == 0, err
    lines = out.decode().split("\n")
    assert lines[:3] == ["1000", "1000", "1000"]
    assert lines[3].split() == ["NoNewPrivs:", "1"]
    assert lines[4] == "/home/app"


@needs_root
def test_exec_exit_code_signal_stdin_and_missing_program(as1000: Frames) -> None:
    assert as1000.exec(1, ["sh", "-c", "echo out; echo err >&2; exit 7"]) == (
        b"out\n",
        b"err\n",
        {"t": "exit", "id": 1, "code": 7, "signal": None},
    )
    as1000.send({"t": "exec", "id": 2, "argv": ["cat"], "stdin": True})
    assert as1000.expect(2)["t"] == "started"
    _type(as1000, 2, b"through spawnd\n")
    as1000.send({"t": "eof", "id": 2})
    assert _pty_until(as1000, 2, b"through spawnd\n") == b"through spawnd\n"
    assert _drain_exit(as1000, 2)["code"] == 0
    # `kill` reaches the real process (another uid) through the proxy.
    as1000.send({"t": "exec", "id": 3, "argv": ["sleep", "30"]})
    assert as1000.expect(3)["t"] == "started"
    as1000.send({"t": "kill", "id": 3, "sig": 15})
    assert _drain_exit(as1000, 3) == {"t": "exit", "id": 3, "code": None, "signal": 15}
    as1000.send({"t": "exec", "id": 4, "argv": ["/no/such/prog"]})
    error = as1000.expect(4)
    assert (error["t"], error["code"]) == ("error", "E_EXEC")
    assert "No such file" in error["message"]


@needs_root
def test_close_kills_the_real_process(as1000: Frames) -> None:
    as1000.send({"t": "exec", "id": 1, "argv": ["sh", "-c", "echo $$; exec sleep 60"]})
    assert as1000.expect(1)["t"] == "started"
    pid = int(_pty_until(as1000, 1, b"\n"))
    assert Path(f"/proc/{pid}/status").read_text().count("\t1000") >= 4  # the uid 1000 one
    as1000.send({"t": "close", "id": 1})
    deadline = time.monotonic() + 10
    while _state(pid) != "Z":
        assert time.monotonic() < deadline, "the spawned process outlived close"
        time.sleep(0.02)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


@needs_root
def test_console_opens_the_console_shell_on_a_pty_as_the_entrypoint_uid(
    tmp_path: Path,
) -> None:
    agent = SpawnAgent(tmp_path, 1000)
    conn = agent.connect()
    try:
        conn.send({"t": "console", "id": 1, "rows": 40, "cols": 120})
        assert conn.expect(1)["t"] == "started"
        _type(conn, 1, b"echo U=$(id -u) S=$(stty size) T=$(tty | cut -c1-9)\n")
        out = _pty_until(conn, 1, b"T=/dev/pts/")
        assert b"U=1000 S=40 120 T=/dev/pts/" in out
        _type(conn, 1, b"exit 3\n")
        assert _drain_exit(conn, 1)["code"] == 3
    finally:
        conn.close()
        agent.stop()


def test_console_is_refused_on_sealed_images(tmp_path: Path) -> None:
    agent = SpawnAgent(tmp_path, os.geteuid(), sealed=True)
    conn = agent.connect()
    try:
        conn.send({"t": "console", "id": 1})
        error = conn.expect(1)
        assert (error["t"], error["code"]) == ("error", "E_SEALED")
    finally:
        conn.close()
        agent.stop()


def test_without_spawnd_listening_exec_is_a_coded_error(tmp_path: Path) -> None:
    agent = SpawnAgent(tmp_path, os.geteuid())
    agent.spawnd.kill()
    agent.spawnd.wait()
    agent.sock.unlink()
    conn = agent.connect()
    try:
        conn.send({"t": "exec", "id": 1, "argv": ["true"]})
        error = conn.expect(1)
        assert (error["t"], error["code"]) == ("error", "E_EXEC")
    finally:
        conn.close()
        agent.stop()


def test_uids_reports_agent_entrypoint_and_services_from_proc(tmp_path: Path) -> None:
    agent = SpawnAgent(tmp_path, os.geteuid())
    sleeper = subprocess.Popen(["sleep", "30"])
    (agent.run_dir / "entrypoint.pid").write_text(f"{sleeper.pid}\n")
    (agent.run_dir / "services" / "web.pid").write_text(f"{sleeper.pid}\n")
    (agent.run_dir / "services" / "gone.pid").write_text("999999999\n")
    conn = agent.connect()
    try:
        conn.send({"t": "uids", "id": 1})
        reply = conn.expect(1)
        me = os.geteuid()
        assert reply["t"] == "uids"
        assert reply["agent"]["pid"] == agent.proc.pid
        assert reply["agent"]["uid"] == reply["agent"]["euid"] == me
        assert reply["entrypoint"]["pid"] == sleeper.pid
        assert reply["entrypoint"]["uid"] == me and reply["entrypoint"]["fsuid"] == me
        assert reply["services"]["web"]["pid"] == sleeper.pid
        assert reply["services"]["gone"] is None
    finally:
        sleeper.kill()
        sleeper.wait()
        conn.close()
        agent.stop()


def test_spawnd_refuses_other_peer_uids(tmp_path: Path) -> None:
    sock = tmp_path / "s.sock"
    proc = subprocess.Popen(
        [
            str(agent_binary()),
            "spawnd",
            "--socket",
            str(sock),
            "--uid",
            "0",
            "--peer-uid",
            str(os.geteuid() + 1),
        ],
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    try:
        assert b"spawnd: serving" in proc.stderr.readline()
        import socket

        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.settimeout(5)
            assert s.recv(16) == b""  # closed without a word
        assert b"refusing a connection from uid" in proc.stderr.readline()
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
