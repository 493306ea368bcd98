"""Dial a guest vsock port through a Firecracker / Cloud Hypervisor "hybrid vsock" socket.

Both VMMs expose the guest's vsock device as one Unix socket on the host. The
host connects, writes ``CONNECT <port>\\n`` and the VMM answers ``OK <hostport>\\n``
once the guest accepted; from then on the socket is the raw guest stream.

While the guest is still booting the VMM accepts the Unix connection and then
closes it (or the socket file does not exist yet), so those outcomes are
retried until the caller's own timeout or cancel scope ends the wait. An answer
that is not ``OK <n>`` is a protocol violation: retrying cannot help, so it
raises at once. The handshake is read byte by byte so that no byte of the guest
stream that may follow ``OK`` in the same segment is swallowed.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.abc
import attrs

from mvm.engine.base.errors import BackendError
from mvm.engine.base.log import get_logger

log = get_logger("mvm.hybrid_vsock")

RETRY_S = 0.005
MAX_RETRY_S = 0.1
HANDSHAKE_TIMEOUT_S = 5.0
MAX_REPLY = 64  # "OK 4294967295\n" is 14 bytes; anything longer is not the VMM talking


class HandshakeError(BackendError):
    """The VMM answered the CONNECT with something other than ``OK <port>``."""

    code = "E_VSOCK_HANDSHAKE"


class _GuestNotReady(Exception):
    """The VMM closed the connection before answering: the guest is not listening yet."""


def parse_reply(line: bytes) -> int:
    """``OK <hostport>`` -> hostport; anything else is a HandshakeError."""
    text = line.decode("ascii", errors="replace").rstrip("\n")
    parts = text.split(" ")
    if len(parts) == 2 and parts[0] == "OK" and parts[1].isdigit():
        return int(parts[1])
    raise HandshakeError(f"hybrid vsock answered {text[:MAX_REPLY]!r} instead of 'OK <port>'")


async def handshake(stream: anyio.abc.ByteStream, port: int) -> int:
    """Send CONNECT and read the one-line answer; returns the VMM's host-side port."""
    await stream.send(f"CONNECT {port}\n".encode())
    line = bytearray()
    while not line.endswith(b"\n"):
        if len(line) >= MAX_REPLY:
            raise HandshakeError(
                f"hybrid vsock answer exceeds {MAX_REPLY} bytes without a newline: "
                f"{bytes(line[:32])!r}..."
            )
        try:
            line += await stream.receive(1)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            if line:
                raise HandshakeError(
                    f"hybrid vsock closed mid-answer after {bytes(line)!r}"
                ) from None
            raise _GuestNotReady from None
    return parse_reply(bytes(line))


@attrs.frozen
class HybridVsockEndpoint:
    """An ``AgentEndpoint`` for a guest port behind a hybrid vsock Unix socket."""

    path: Path
    port: int
    handshake_timeout: float = HANDSHAKE_TIMEOUT_S

    async def connect(self) -> anyio.abc.ByteStream:
        delay = RETRY_S
        attempts = 0
        while True:
            attempts += 1
            try:
                stream = await anyio.connect_unix(str(self.path))
            except OSError:  # VMM not started yet, or its socket not bound yet
                await anyio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            try:
                with anyio.fail_after(self.handshake_timeout):
                    host_port = await handshake(stream, self.port)
            except (_GuestNotReady, TimeoutError):
                await stream.aclose()
                await anyio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            except BaseException:
                await anyio.aclose_forcefully(stream)
                raise
            log.debug(
                "vsock.connected",
                path=str(self.path),
                port=self.port,
                host_port=host_port,
                attempts=attempts,
            )
            return stream
