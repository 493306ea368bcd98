"""How the host dials the guest agent of a QEMU VM.

QEMU listens on the host side (a ``server=on,wait=off`` chardev for
virtio-serial; the kernel's vsock for vhost-vsock), so the host dials. The
socket exists before the guest has booted, and vsock refuses until the agent
listens, so ``connect`` retries until it gets through; the caller bounds it with
its own timeout or cancel scope (boot time varies by seconds under TCG).
"""

from __future__ import annotations

import socket
from pathlib import Path

import anyio
import anyio.abc
import attrs

from mvm.engine.base.errors import BackendError

RETRY_S = 0.005
MAX_RETRY_S = 0.05


@attrs.frozen
class UnixSocketEndpoint:
    """A virtio-serial port exposed by QEMU as a Unix socket (``RUN/agent.sock``)."""

    path: Path

    async def connect(self) -> anyio.abc.ByteStream:
        delay = RETRY_S
        while True:
            try:
                return await anyio.connect_unix(str(self.path))
            except OSError:  # not created yet / QEMU still starting
                await anyio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)


@attrs.frozen
class VsockEndpoint:
    """The agent's AF_VSOCK listener in a vhost-vsock guest."""

    cid: int
    port: int

    async def connect(self) -> anyio.abc.ByteStream:
        delay = RETRY_S
        while True:
            try:
                sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
            except OSError as exc:  # no vsock support in this host kernel: retrying is futile
                raise BackendError(
                    f"cannot create an AF_VSOCK socket: {exc.strerror or exc}",
                    code="E_VSOCK",
                    hint="load the vhost_vsock module or use the virtio-serial channel",
                ) from None
            try:
                sock.setblocking(False)
                try:
                    sock.connect((self.cid, self.port))
                except BlockingIOError:
                    await anyio.wait_writable(sock)
                    err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        raise OSError(err, "vsock connect failed") from None
                return await anyio.abc.SocketStream.from_socket(sock)
            except OSError:  # guest not up yet: ECONNRESET / ENODEV / ETIMEDOUT
                sock.close()
                await anyio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_S)
            except BaseException:
                sock.close()
                raise


def parse_vsock_address(agent_socket: Path) -> tuple[int, int] | None:
    """``LaunchPlan.agent_socket`` is ``RUN/vsock-<cid>-<port>`` for vsock VMs (not a file)."""
    name = agent_socket.name
    if not name.startswith("vsock-"):
        return None
    try:
        cid, port = name.removeprefix("vsock-").split("-")
        return int(cid), int(port)
    except ValueError:
        return None
