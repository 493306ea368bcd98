"""Guest hardening (issue 15) without a VM: what /init's workloads inherit and what
the sealed agent binary contains.

/init starts every service and entrypoint from a background job of a
non-interactive ash, which ignores SIGINT and SIGQUIT for good; the agent's
``setpriv`` (the one door every workload goes through) must hand the program the
default dispositions back. A sealed image gets an agent compiled without the
exec/console/pty code; ``nm`` on the two real builds shows which has it.
"""

from __future__ import annotations

import base64
import json
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

from mvm.backends.demo import DEMO_DEV_SPEC, DEMO_SPEC
from mvm.backends.guest.build import agent_binary
from mvm.backends.image.builder import ImageArtifacts, build_image
from mvm.engine.images.imagespec import ImageSpec

SIGINT_BIT = 1 << (signal.SIGINT - 1)
SIGQUIT_BIT = 1 << (signal.SIGQUIT - 1)
SIGTERM_BIT = 1 << (signal.SIGTERM - 1)


def _ignore_like_ash() -> None:
    """What ash does to a background job (plus SIGTERM/SIGPIPE, for good measure)."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})


def _status_masks(argv: list[str]) -> dict[str, int]:
    out = subprocess.run(
        [*argv, "grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"],
        preexec_fn=_ignore_like_ash,  # the test process is single-threaded
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return {k: int(v, 16) for k, v in (line.split(":\t") for line in out.splitlines())}


def test_without_setpriv_the_ignored_signals_are_inherited() -> None:
    """The failure the fix is for, so the next test can fail."""
    masks = _status_masks([])
    assert masks["SigIgn"] & SIGINT_BIT and masks["SigIgn"] & SIGQUIT_BIT
    assert masks["SigBlk"] & (1 << (signal.SIGUSR1 - 1))


def test_setpriv_restores_default_dispositions_and_mask() -> None:
    for opts in (["--no-new-privs"], ["--reuid=0", "--regid=0", "--clear-groups"]):
        masks = _status_masks([str(agent_binary()), "setpriv", *opts])
        assert masks["SigIgn"] == 0, f"{opts}: SigIgn {masks['SigIgn']:#x}"
        assert masks["SigBlk"] == 0, f"{opts}: SigBlk {masks['SigBlk']:#x}"


# ------------------------------------------------------------------ the sealed agent

# What only the accessible agent has: the exec and console handlers, the root spawn
# helper and its proxy, and libc's PTY code (musl's openpty opens /dev/ptmx).
ACCESSIBLE_ONLY = ("do_exec", "do_console", "spawnd_main", "spawn_proxy", "openpty")
# What both need: `run` of the image's own entrypoint, setpriv, health checks.
SHARED = ("run_start", "exec_spawn", "reseed_main", "uids_reply", "execvp")


def _symbols(binary: Path) -> set[str]:
    out = subprocess.run(
        ["nm", "--defined-only", str(binary)], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


def test_sealed_agent_has_no_exec_console_or_pty_code() -> None:
    accessible, sealed = agent_binary(), agent_binary(sealed=True)
    assert accessible != sealed
    have, prod = _symbols(accessible), _symbols(sealed)
    for name in ACCESSIBLE_ONLY:
        assert name in have, f"accessible agent lacks {name}"
        assert name not in prod, f"sealed agent contains {name}"
    for name in SHARED:
        assert name in have and name in prod, name
    text = sealed.read_bytes()
    assert b"/dev/ptmx" in accessible.read_bytes()
    assert b"/dev/ptmx" not in text
    assert b"argv must be a non-empty array" not in text  # exec's request parser
    assert b"mvm-agent spawnd" in accessible.read_bytes()  # its usage line
    assert b"mvm-agent spawnd" not in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class _Conn:
    def __init__(self, port: int) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.buf = b""

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode()
        self.sock.sendall(struct.pack(">I", len(body)) + body)

    def recv(self) -> dict[str, Any]:
        while len(self.buf) < 4 or len(self.buf) < 4 + struct.unpack(">I", self.buf[:4])[0]:
            chunk = self.sock.recv(65536)
            assert chunk, "agent closed the connection"
            self.buf += chunk
        (n,) = struct.unpack(">I", self.buf[:4])
        body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
        message: dict[str, Any] = json.loads(body)
        return message

    def expect(self, ident: int) -> dict[str, Any]:
        while True:
            message = self.recv()
            if message.get("id") == ident:
                return message


def test_sealed_agent_answers_exec_and_console_with_a_coded_error(tmp_path: Path) -> None:
    """Without --sealed on its command line too: the build is what seals it."""
    port = _free_port()
    wrapper = tmp_path / "wrapper.json"
    wrapper.write_text(json.dumps({"argv": ["sh", "-c", "echo ran $1", "sh"]}))
    proc = subprocess.Popen(
        [str(agent_binary(sealed=True)), "--tcp-listen", f"127.0.0.1:{port}",
         "--health-dir", str(tmp_path), "--log-dir", str(tmp_path),
         "--ctl", str(tmp_path / "ctl"), "--wrapper", str(wrapper)],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        conn = _Conn(port)
        hello = conn.expect(0)
        assert hello["t"] == "hello" and hello["sealed"] is True
        conn.send({"t": "exec", "id": 1, "argv": ["id"]})
        conn.send({"t": "console", "id": 2})
        for ident, op in ((1, "exec"), (2, "console")):
            err = conn.expect(ident)
            assert (err["t"], err["code"]) == ("error", "E_SEALED"), err
            assert f"{op} is not in a sealed image" in err["message"]
        conn.send({"t": "run", "id": 3, "mode": "oneshot"})  # the image's own entrypoint
        assert conn.expect(3)["t"] == "started"
        conn.send({"t": "eof", "id": 3})
        frames = [conn.expect(3) for _ in range(2)]
        data = [f for f in frames if f["t"] == "data"]
        assert data and base64.b64decode(data[0]["data"]) == b"ran --mode\n", frames
    finally:
        proc.kill()
        proc.wait()


async def test_sealed_images_get_the_sealed_agent_and_their_own_key(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF fake kernel")
    init = tmp_path / "init"
    init.write_text("#!/bin/sh\nexec /bin/sh\n")
    cache = tmp_path / "cache"
    accessible, sealed = agent_binary(), agent_binary(sealed=True)

    async def build(spec: ImageSpec, agent: Path) -> ImageArtifacts:
        return await build_image(spec, kernel=kernel, agent=agent, init=init, cache=cache)

    def shipped(art: ImageArtifacts) -> bytes:
        out = tmp_path / f"agent-{art.key}"
        subprocess.run(
            ["debugfs", "-R", f"dump /usr/bin/mvm-agent {out}", str(art.rootfs)],
            capture_output=True, check=True,
        )  # fmt: skip
        return out.read_bytes()

    assert DEMO_SPEC.sealed and not DEMO_DEV_SPEC.sealed
    prod = await build(DEMO_SPEC, accessible)  # what engine/builders passes
    assert shipped(prod) == sealed.read_bytes()
    dev = await build(DEMO_DEV_SPEC, accessible)
    assert shipped(dev) == accessible.read_bytes()
    # The key hashes the agent that went in: handing the sealed build directly is the
    # same image; an accessible agent forced in (a copy is used as is) is another one.
    assert (await build(DEMO_SPEC, sealed)).key == prod.key
    forced = tmp_path / "mvm-agent"
    forced.write_bytes(accessible.read_bytes())
    other = await build(DEMO_SPEC, forced)
    assert other.key != prod.key and shipped(other) == accessible.read_bytes()
