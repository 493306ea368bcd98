"""A minimal guest agent in Python, for the agent-language benchmark only.

It exists to answer one question with numbers (DESIGN issue 3): what would the
guest agent cost if it were written in Python instead of static C? So it speaks
just enough of PROTOCOL.md over the same transports for a fair comparison:

* framing (4-byte big-endian length + JSON object, 1..256 KiB) and validation;
* ``hello`` on every host connect (virtio-serial: the POLLHUP edge, polled every
  20 ms like the C agent), and again on a host ``hello``;
* ``ping`` -> ``pong`` {uptime_ms};
* ``exec`` without stdin/PTY: ``started``, ``data`` (fd 1/2), ``exit``. The agent
  waits for the process inline (a real agent would multiplex), which is enough
  to run ``true`` and ``cat /proc/PID/status`` for the benchmark;
* anything else -> ``error`` ``E_PROTO_UNKNOWN``.

Only the standard library, and only cheap modules (no subprocess, socket or
asyncio): start-up time is what is being measured, and a careful Python agent
would keep its imports this small too. It runs as a script with no mvm
installed, in the guest (``python3 -s -S agent.py --serial /dev/vportNpM``) or
on the host (``--fd N``: serve one already-connected socket, used by the tests).
"""

from __future__ import annotations

import base64
import json
import os
import select
import struct
import sys
import time
from typing import Any

VERSION = 1
AGENT = "mvm-agent-py/0.1"
MAX_FRAME = 256 * 1024
CHUNK = 64 * 1024
SERIAL_HUP_POLL_S = 0.02
SERIAL_REOPEN_S = 0.2
PORT_NAME = "mvm.agent"
_HEADER = struct.Struct(">I")
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ProtocolViolation(Exception):
    """The host broke the framing: the connection is dropped (as the C agent does)."""


def log(message: str) -> None:
    sys.stderr.write(f"{AGENT}: {message}\n")
    sys.stderr.flush()


def uptime_ms() -> int:
    try:
        with open("/proc/uptime") as f:
            return int(float(f.read().split()[0]) * 1000)
    except (OSError, ValueError, IndexError):
        return int(time.monotonic() * 1000)


def machine_id() -> str:
    try:
        with open("/etc/machine-id") as f:
            return f.read().strip()
    except OSError:
        return ""


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


def decode(body: bytes) -> dict[str, Any]:
    try:
        message = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ProtocolViolation(f"frame is not JSON: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("t"), str):
        raise ProtocolViolation("frame is not an object with a string 't'")
    ident = message.get("id", 0)
    if not isinstance(ident, int) or isinstance(ident, bool) or ident < 0:
        raise ProtocolViolation("frame 'id' is not a non-negative integer")
    message["id"] = ident
    return message


class Session:
    """One host connection on one fd (a socket or a virtio-serial port)."""

    def __init__(self, fd: int, *, sealed: bool) -> None:
        self.fd = fd
        self.sealed = sealed
        self.buf = bytearray()

    def reset(self) -> None:
        self.buf.clear()

    def send(self, message: dict[str, Any]) -> None:
        data = memoryview(encode(message))
        while data:
            try:
                n = os.write(self.fd, data)
            except BlockingIOError:
                select.select([], [self.fd], [], 1.0)
                continue
            data = data[n:]

    def greet(self) -> None:
        self.send(
            {
                "t": "hello",
                "id": 0,
                "v": VERSION,
                "agent": AGENT,
                "sealed": self.sealed,
                "uptime_ms": uptime_ms(),
                "hostname": os.uname().nodename,
                "machine_id": machine_id(),
                "pid": os.getpid(),
            }
        )

    def feed(self, data: bytes) -> None:
        """Append received bytes and handle every complete frame."""
        self.buf += data
        while len(self.buf) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self.buf)
            if not 1 <= length <= MAX_FRAME:
                raise ProtocolViolation(f"frame length {length} outside 1..{MAX_FRAME}")
            if len(self.buf) < _HEADER.size + length:
                return
            body = bytes(self.buf[_HEADER.size : _HEADER.size + length])
            del self.buf[: _HEADER.size + length]
            self.handle(decode(body))

    def handle(self, msg: dict[str, Any]) -> None:
        t, ident = msg["t"], msg["id"]
        if t == "hello" and ident == 0:
            self.greet()
        elif ident == 0:
            self.error(0, "E_PROTO_ID", "requests need an id > 0")
        elif t == "ping":
            self.send({"t": "pong", "id": ident, "uptime_ms": uptime_ms()})
        elif t == "exec":
            self.exec(ident, msg)
        elif t in ("data", "eof", "ack", "kill", "resize", "close"):
            pass  # stream frames for a finished id race with its end: ignored
        else:
            self.error(ident, "E_PROTO_UNKNOWN", f"unknown request type {t!r}")

    def error(self, ident: int, code: str, message: str) -> None:
        self.send({"t": "error", "id": ident, "code": code, "message": message})

    def exec(self, ident: int, msg: dict[str, Any]) -> None:
        if self.sealed:
            self.error(ident, "E_SEALED", "exec is not available on a sealed image")
            return
        argv = msg.get("argv")
        env = msg.get("env") or {}
        if (
            not isinstance(argv, list)
            or not argv
            or not all(isinstance(a, str) for a in argv)
            or not isinstance(env, dict)
            or msg.get("stdin")
            or msg.get("pty")
        ):
            self.error(ident, "E_EXEC_ARGS", "argv [str] required; stdin and pty unsupported")
            return
        full_env = {"PATH": _PATH, **os.environ, **{str(k): str(v) for k, v in env.items()}}
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            pid = _spawn(argv, full_env, msg.get("cwd"), out_w, err_w)
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            self.error(ident, "E_EXEC", f"{argv[0]}: {exc.strerror}")
            return
        finally:
            os.close(out_w)
            os.close(err_w)
        self.send({"t": "started", "id": ident, "pid": pid})
        self._pump(ident, {out_r: 1, err_r: 2})
        _, status = os.waitpid(pid, 0)
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        self.send({"t": "exit", "id": ident, "code": code, "signal": sig})

    def _pump(self, ident: int, fds: dict[int, int]) -> None:
        """Forward the process's output until both pipes reach EOF."""
        while fds:
            ready, _, _ = select.select(list(fds), [], [])
            for fd in ready:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    del fds[fd]
                    os.close(fd)
                    continue
                data = base64.b64encode(chunk).decode()
                self.send({"t": "data", "id": ident, "fd": fds[fd], "data": data})


def _spawn(argv: list[str], env: dict[str, str], cwd: object, out_w: int, err_w: int) -> int:
    """posix_spawn with stdin on /dev/null and stdout/stderr on the pipes."""
    if isinstance(cwd, str):
        os.chdir(cwd)  # posix_spawn has no cwd argument in 3.11; restored below
    try:
        return os.posix_spawnp(
            argv[0],
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out_w, 1),
                (os.POSIX_SPAWN_DUP2, err_w, 2),
            ],
            setsid=True,
        )
    finally:
        if isinstance(cwd, str):
            os.chdir("/")


# ------------------------------------------------------------------------ transports


def serve_fd(fd: int, *, sealed: bool) -> None:
    """Serve one connected stream socket until the host closes it."""
    session = Session(fd, sealed=sealed)
    session.greet()
    while True:
        data = os.read(fd, CHUNK)
        if not data:
            return
        try:
            session.feed(data)
        except ProtocolViolation as exc:
            log(f"closing connection: {exc}")
            return


def find_port(name: str) -> str | None:
    base = "/sys/class/virtio-ports"
    try:
        ports = sorted(os.listdir(base))
    except OSError:
        return None
    for port in ports:
        try:
            with open(f"{base}/{port}/name") as f:
                if f.read().strip() == name:
                    return f"/dev/{port}"
        except OSError:
            continue
    return None


def serve_serial(spec: str, *, sealed: bool) -> None:
    """virtio-serial: the fd never closes; POLLHUP says whether a host is attached."""
    fd = -1
    while fd < 0:
        path = spec if spec.startswith("/") else find_port(spec)
        try:
            if path is None:
                raise FileNotFoundError(spec)
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            log(f"open {path or spec}: {exc.strerror} (retrying)")
            time.sleep(SERIAL_REOPEN_S)
    log(f"serving on {path}")
    session = Session(fd, sealed=sealed)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    up = False
    while True:
        events = poller.poll(0 if not up else SERIAL_HUP_POLL_S * 1000)
        revents = events[0][1] if events else 0
        connected = not revents & select.POLLHUP
        if connected and not up:
            session.reset()
            session.greet()
            up = True
        elif not connected:
            if up:
                log("host disconnected from the serial port")
                session.reset()
                up = False
            time.sleep(SERIAL_HUP_POLL_S)
            continue
        if not revents & select.POLLIN:
            continue
        try:
            data = os.read(fd, CHUNK)
        except BlockingIOError:
            continue
        try:
            session.feed(data)
        except ProtocolViolation as exc:
            log(f"dropping the host's state: {exc}")
            session.reset()


def main(argv: list[str]) -> int:
    sealed = "--sealed" in argv
    args = [a for a in argv if a != "--sealed"]
    opts = dict(zip(args[::2], args[1::2], strict=False))
    if len(args) % 2 or not set(opts) <= {"--serial", "--fd", "--vsock"}:
        log("usage: agent.py [--serial DEV|NAME | --fd N] [--sealed]")
        return 2
    log(f"ready (pid {os.getpid()}, {'sealed' if sealed else 'accessible'})")
    if "--fd" in opts:
        serve_fd(int(opts["--fd"]), sealed=sealed)
        return 0
    serve_serial(opts.get("--serial", PORT_NAME), sealed=sealed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
