"""vsock mode: a builder VM's build service, spoken over AF_VSOCK (or a Unix socket).

Both halves live here: :class:`VsockBuilder` (host side) and :func:`serve_builder`
(what the builder VM runs). The protocol is the guest agent's framing -- 4-byte
big-endian length + JSON, capped -- with raw payloads announced by ``"bytes": N``
and sent right after their header:

    -> {"op": "hello", "v": 1}                   <- {"ok": true, "v": 1}
    -> {"op": "build", "attr": A, "bytes": N} + the flake as a tar
    <- {"log": "line"}...                        <- {"ok": true} | {"ok": false, "code", "error"}
    -> {"op": "fetch", "name": "vmlinux"}        <- {"ok": true, "bytes": N} + file

Closing the connection cancels a running build (the server kills its process
group and deletes its work dir), which is how Ctrl-C on the host reaches the VM.

This host has no /dev/vhost-vsock (and no nixpkgs to build a builder VM image),
so the transport is tested over a Unix socket stand-in (``unix:/path``); the real
one is ``vsock:CID:PORT``. :meth:`VsockTarget.unavailable` says which is missing.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import socket
import struct
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import attrs

from mvm.engine.base.errors import BuildPhaseError, ConfigError
from mvm.engine.base.log import get_logger
from mvm.engine.base.settings import current_settings
from mvm.engine.builders import ARTIFACTS, BuildJob, BuildMode, LogFn, LogTail, check_artifacts
from mvm.engine.builders.host import nix_build_argv, run_logged
from mvm.engine.builders.ssh import flake_tarball

log = get_logger("mvm.build.vsock")

VERSION = 1
MAX_HEADER = 256 * 1024
CHUNK = 1 << 16
DEFAULT_PORT = 5253  # next to the guest agent's 5252
_CLOSED = (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError)


@attrs.frozen
class VsockTarget:
    """``vsock:CID:PORT`` (a builder VM) or ``unix:/path`` (a stand-in, e.g. tests)."""

    kind: str
    cid: int = 0
    port: int = DEFAULT_PORT
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> VsockTarget:
        if text.startswith("unix:"):
            return cls("unix", path=text[5:])
        body = text.removeprefix("vsock:")
        cid, _, port = body.partition(":")
        if not cid.isdigit() or (port and not port.isdigit()):
            raise ConfigError(
                f"builder VM address {text!r} is not vsock:CID[:PORT] or unix:PATH",
                code="E_BUILD_VSOCK_TARGET",
            )
        return cls("vsock", cid=int(cid), port=int(port) if port else DEFAULT_PORT)

    @classmethod
    def from_env(cls) -> VsockTarget | None:
        text = current_settings().builder_vsock
        return cls.parse(text) if text else None

    def unavailable(self) -> str | None:
        """Why this target cannot be used here, or None."""
        if self.kind == "unix":
            return None if Path(self.path).is_socket() else f"no socket at {self.path}"
        if not hasattr(socket, "AF_VSOCK"):
            return "this Python has no AF_VSOCK"
        if not Path("/dev/vhost-vsock").exists() and not Path("/dev/vsock").exists():
            return "/dev/vhost-vsock is absent: no vsock transport on this host"
        return None

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"vsock:{self.cid}:{self.port}"


def _fail(phase: str, message: str, code: str) -> BuildPhaseError:
    return BuildPhaseError(phase, message, code=code)


async def _connect(target: VsockTarget) -> anyio.abc.SocketStream:
    problem = target.unavailable()
    if problem:
        raise _fail("connect", problem, "E_BUILD_VSOCK_UNAVAILABLE")
    try:
        if target.kind == "unix":
            return await anyio.connect_unix(target.path)
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        await anyio.to_thread.run_sync(sock.connect, (target.cid, target.port))
        sock.setblocking(False)
        return await anyio.abc.SocketStream.from_socket(sock)
    except OSError as exc:
        raise _fail("connect", f"cannot reach {target}: {exc}", "E_BUILD_VSOCK_CONNECT") from None


class Framed:
    """Frames over a byte stream; the receive buffer keeps bytes past the current frame."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self._buf = bytearray()

    async def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        body = json.dumps(header).encode()
        await self.stream.send(struct.pack(">I", len(body)) + body)
        for i in range(0, len(payload), CHUNK):
            await self.stream.send(payload[i : i + CHUNK])

    async def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            try:
                self._buf += await self.stream.receive()
            except _CLOSED:
                raise EOFError("the peer closed the connection") from None
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def receive(self) -> tuple[dict[str, Any], bytes]:
        (length,) = struct.unpack(">I", await self._exactly(4))
        if length > MAX_HEADER:
            raise _fail("protocol", f"frame of {length} bytes is over the cap", "E_BUILD_PROTOCOL")
        header = json.loads(await self._exactly(length))
        if not isinstance(header, dict):
            raise _fail("protocol", "frame is not a JSON object", "E_BUILD_PROTOCOL")
        size = header.get("bytes", 0)
        payload = await self._exactly(int(size)) if size else b""
        return header, payload


class VsockBuilder:
    def __init__(self, target: VsockTarget) -> None:
        self.target = target

    @property
    def mode(self) -> BuildMode:
        return "vsock"

    async def build(self, job: BuildJob, out: Path, log_fn: LogFn) -> None:
        if job.source is None:
            raise _fail("stage", f"{job.name} has no flake source", "E_BUILD_SOURCE")
        tarball = await anyio.to_thread.run_sync(flake_tarball, job.source)
        stream = await _connect(self.target)
        async with stream:
            peer = Framed(stream)
            phase = "connect"
            try:
                await peer.send({"op": "hello", "v": VERSION})
                reply, _ = await peer.receive()
                if reply.get("v") != VERSION:
                    raise _fail("connect", f"builder speaks v{reply.get('v')}", "E_BUILD_PROTOCOL")
                phase = "stage"
                await peer.send({"op": "build", "attr": job.attr, "bytes": len(tarball)}, tarball)
                phase = "build"
                tail = LogTail(log_fn)
                while True:
                    reply, _ = await peer.receive()
                    if "log" in reply:
                        tail(str(reply["log"]))
                        continue
                    break
                if not reply.get("ok"):
                    raise _fail(
                        "build",
                        f"{reply.get('error', 'failed')}: {tail.summary()}",
                        str(reply.get("code", "E_BUILD_NIX_FAILED")),
                    )
                phase = "fetch"
                for name in ARTIFACTS:
                    await peer.send({"op": "fetch", "name": name})
                    reply, data = await peer.receive()
                    if not reply.get("ok"):
                        raise _fail(
                            "fetch", f"no {name}: {reply.get('error')}", "E_BUILD_ARTIFACTS"
                        )
                    (out / name).write_bytes(data)
            except EOFError as exc:
                raise _fail(
                    phase, f"{self.target} went away: {exc}", "E_BUILD_VSOCK_DISCONNECT"
                ) from None
        check_artifacts(out)


async def serve_builder(stream: anyio.abc.ByteStream, *, nix: str = "nix") -> None:
    """Serve one host connection (the builder VM side). A closed connection cancels
    the build in progress; the work dir is removed whatever happens."""
    peer = Framed(stream)
    workdir = Path(tempfile.mkdtemp(prefix="mvm-vsock-build."))
    try:
        hello, _ = await peer.receive()
        await peer.send({"ok": True, "v": VERSION, "op": hello.get("op")})
        request, tarball = await peer.receive()
        src = workdir / "src"
        src.mkdir()
        with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
            tar.extractall(src, filter="data")
        argv = nix_build_argv(
            nix, f"path:{src}#{request.get('attr', 'default')}", str(workdir / "result")
        )
        status = await _build_until_hangup(peer, argv)
        if status != 0:
            await peer.send(
                {"ok": False, "code": "E_BUILD_NIX_FAILED", "error": f"nix build exit {status}"}
            )
            return
        await peer.send({"ok": True})
        while True:
            request, _ = await peer.receive()
            name = str(request.get("name", ""))
            path = workdir / "result" / name
            if name not in ARTIFACTS or not path.is_file():
                await peer.send({"ok": False, "error": f"{name} missing"})
                continue
            data = path.read_bytes()
            await peer.send({"ok": True, "bytes": len(data)}, data)
    except EOFError:
        pass
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _build_until_hangup(peer: Framed, argv: list[str]) -> int:
    status = -1
    async with anyio.create_task_group() as tg:

        async def watch_hangup() -> None:
            with contextlib.suppress(*_CLOSED):
                await peer.stream.receive()
            tg.cancel_scope.cancel()  # host gone: kill the build (run_logged's finally)

        async def build() -> None:
            nonlocal status
            send, recv = anyio.create_memory_object_stream[str](math.inf)

            async def forward() -> None:
                async with recv:
                    async for line in recv:
                        await peer.send({"log": line})

            async with anyio.create_task_group() as inner:
                inner.start_soon(forward)
                with send:
                    status = await run_logged(argv, send.send_nowait)
            tg.cancel_scope.cancel()

        tg.start_soon(watch_hangup)
        tg.start_soon(build)
    if status == -1:
        raise EOFError("the host closed the connection during the build")
    return status
