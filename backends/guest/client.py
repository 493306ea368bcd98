"""Host side of the guest agent protocol: one multiplexed connection per VM.

A single reader task demultiplexes frames by request id into per-request
channels, so hundreds of port-forward streams, an exec and a health query share
one transport without head-of-line blocking: channel buffers are unbounded in
frames but bounded in bytes by the protocol's per-stream ack window.
"""

from __future__ import annotations

import base64
import itertools
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import attrs

from mvm.backends.guest.channel import Channel
from mvm.backends.guest.protocol import VERSION, FrameReader, ProtocolError, encode_frame
from mvm.backends.guest.streams import AgentStream, ExecSession
from mvm.engine.base.errors import AgentError, RequestTimeout, unwrap
from mvm.engine.base.log import get_logger

log = get_logger("mvm.agent.client")

EventCallback = Callable[[dict[str, Any]], None]
HEALTH_MAX_AGE_S = 0.25


@attrs.frozen
class ExecResult:
    """One finished guest command: exit ``code`` (None if killed by ``signal``) and its
    buffered stdout/stderr bytes."""

    code: int | None
    signal: int | None
    stdout: bytes
    stderr: bytes

    @property
    def ok(self) -> bool:
        return self.code == 0


@attrs.frozen
class LogLine:
    """One line a guest service wrote (``service``, ``line``), as ``follow_logs`` yields it."""

    service: str
    line: str


class AgentClient:
    """Requests to one guest agent. Create with ``AgentClient.connect``."""

    def __init__(
        self,
        stream: anyio.abc.ByteStream,
        reader: FrameReader,
        hello: dict[str, Any],
        on_event: EventCallback | None,
    ) -> None:
        self._stream = stream
        self._reader = reader
        self.hello: dict[str, Any] = hello
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._channels: dict[int, Channel] = {}
        self._send_lock = anyio.Lock()
        self._closed = anyio.Event()
        self.close_reason: str | None = None
        self.health_status: dict[str, str] = {}
        self._health_cache: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._health_inflight: anyio.Event | None = None
        self._health_waiters: dict[str, anyio.Event] = {}
        # Hellos we asked for (the dial's re-greet) and have not seen answered yet:
        # any other hello means the agent restarted or dropped this link's streams.
        self._greets_pending = 0
        self.restarts = 0

    @classmethod
    @asynccontextmanager
    async def connect(
        cls,
        stream: anyio.abc.ByteStream,
        *,
        hello_timeout: float,
        on_event: EventCallback | None = None,
        regreet: bool = True,
    ) -> AsyncIterator[AgentClient]:
        """Ask the agent to greet (a virtio-serial agent may not notice a re-dial and
        stay silent), wait for its hello (TimeoutError if none comes), then serve."""
        reader = FrameReader(stream)
        try:
            if regreet:
                await stream.send(encode_frame({"t": "hello", "id": 0}))
            with anyio.fail_after(hello_timeout):
                hello = await reader.read()
            if hello is None:
                raise AgentError(
                    "the guest agent closed the connection before its hello", code="E_AGENT_GONE"
                )
            if hello["t"] != "hello":
                raise ProtocolError(f"expected hello, got {hello['t']!r}")
            if hello.get("v") != VERSION:
                raise AgentError(
                    f"guest agent speaks protocol v{hello.get('v')}, this mvm speaks v{VERSION}",
                    code="E_PROTO_VERSION",
                    hint="rebuild the image with this mvm version",
                )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await stream.aclose()
            raise
        client = cls(stream, reader, hello, on_event)
        # On a fresh TCP/vsock connection the agent greets by itself and then again in
        # answer to ours: that second hello is expected, not a restart.
        client._greets_pending = 1 if regreet else 0
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client._read_loop)
                try:
                    yield client
                finally:
                    tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The read loop never raises, so a lone error is the caller's own: give it
            # back unwrapped, so ``except MvmError`` around this block works.
            single = unwrap(group)
            if single is group:
                raise
            raise single from None
        finally:
            client._finish("client closed")
            with anyio.CancelScope(shield=True):
                await stream.aclose()

    # -- connection plumbing ---------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "agent closed the connection"
        try:
            while True:
                message = await self._reader.read()
                if message is None:
                    break
                self._dispatch(message)
        except ProtocolError as exc:
            reason = exc.message
            log.warning("agent.protocol_error", error=exc.message)
        finally:
            self._finish(reason)

    def _finish(self, reason: str) -> None:
        if self._closed.is_set():
            return
        self.close_reason = reason
        self._closed.set()
        for waiter in self._health_waiters.values():
            waiter.set()
        self._health_waiters.clear()
        for channel in list(self._channels.values()):
            channel.abort(reason)
        self._channels.clear()

    def _hello(self, message: dict[str, Any]) -> None:
        """A hello after the first: the answer to our re-greet, or the agent restarted
        (new pid) / dropped this link's streams (a greeting we did not ask for). Then
        every in-flight request fails with E_AGENT_RESTARTED (exec, run, logs -f,
        console and forwarded connections alike, since all are channels), and health
        is ``unknown`` until the new agent reports."""
        same_agent = message.get("pid") == self.hello.get("pid")
        if same_agent and self._greets_pending > 0:
            self._greets_pending -= 1
            self.hello = dict(message)
            return
        self._greets_pending = 0
        self.restarts += 1
        reason = "the guest agent restarted" if not same_agent else "the guest agent re-greeted"
        log.warning(
            "agent.restarted",
            old_pid=self.hello.get("pid"),
            new_pid=message.get("pid"),
            in_flight=len(self._channels),
        )
        self.hello = dict(message)
        for channel in list(self._channels.values()):
            channel.abort(reason, code="E_AGENT_RESTARTED")
        self._channels.clear()
        self.health_status = {name: "unknown" for name in self.health_status}
        self._health_cache = None
        for waiter in self._health_waiters.values():
            waiter.set()
        self._health_waiters.clear()

    def _dispatch(self, message: dict[str, Any]) -> None:
        ident = message["id"]
        if ident == 0:
            if message["t"] == "hello":
                self._hello(message)
            elif message["t"] == "health_changed":
                service = str(message.get("service"))
                self.health_status[service] = str(message.get("status"))
                self._health_cache = None  # the table is stale now
                waiter = self._health_waiters.pop(service, None)
                if waiter is not None:
                    waiter.set()
            if self._on_event is not None:
                self._on_event(message)
            return
        channel = self._channels.get(ident)
        if channel is not None:
            channel.deliver(message)

    @property
    def closed(self) -> bool:
        """True once the agent link is gone."""
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Block until the agent link is gone."""
        await self._closed.wait()

    async def send_frame(self, message: dict[str, Any]) -> None:
        """Send one protocol message (backends/guest/PROTOCOL.md)."""
        await self.send_encoded(encode_frame(message))

    async def send_encoded(self, frame: bytes) -> None:
        """Send a frame already encoded (``encode_frame`` / ``encode_data_frame``)."""
        if self._closed.is_set():
            raise AgentError("the guest agent connection is closed", code="E_AGENT_GONE")
        try:
            async with self._send_lock:
                await self._stream.send(frame)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            self._finish("send failed")
            raise AgentError("the guest agent connection broke", code="E_AGENT_GONE") from None

    async def open_channel(self, kind: str, *, raw: bool = False, **fields: Any) -> Channel:
        """Open a multiplexed channel (exec, console, file streams) of ``kind``."""
        ident = next(self._ids)
        channel = Channel(ident, self, raw=raw)
        self._channels[ident] = channel
        try:
            await self.send_frame({"t": kind, "id": ident, **fields})
        except BaseException:
            self.forget(ident)
            raise
        return channel

    def forget(self, ident: int) -> None:
        """Drop a closed channel from the link."""
        self._channels.pop(ident, None)

    async def _call(self, kind: str, *, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        channel = await self.open_channel(kind, **fields)
        try:
            with anyio.move_on_after(timeout) as scope:
                reply = await channel.next()
            if scope.cancelled_caught:
                raise RequestTimeout(
                    f"guest agent did not answer {kind!r} within {timeout:.0f}s", code="E_TIMEOUT"
                )
            return reply
        finally:
            self.forget(channel.id)

    # -- requests ---------------------------------------------------------------------------

    async def ping(self, timeout: float = 10.0) -> int:
        """Round trip to the agent; returns its uptime in ms."""
        reply = await self._call("ping", timeout=timeout)
        return int(reply.get("uptime_ms", 0))

    async def health(
        self, timeout: float = 10.0, *, max_age: float = HEALTH_MAX_AGE_S
    ) -> dict[str, dict[str, Any]]:
        """The agent's health table. The agent re-runs each check at most once per
        interval (>= 1 s), so a reply younger than ``max_age`` is as good as a new one:
        concurrent and back-to-back callers (one HealthCheck per service, mux users)
        share one request instead of each paying a round trip."""
        now = anyio.current_time()
        if self._health_cache is not None and now - self._health_cache[0] <= max_age:
            return self._health_cache[1]
        if self._health_inflight is not None:
            await self._health_inflight.wait()
            if self._health_cache is not None:
                return self._health_cache[1]
        self._health_inflight = done = anyio.Event()
        try:
            reply = await self._call("health", timeout=timeout)
            services = reply.get("services", {})
            table = dict(services) if isinstance(services, dict) else {}
            self._health_cache = (anyio.current_time(), table)
            return table
        finally:
            self._health_inflight = None
            done.set()

    async def wait_health_change(self, service: str) -> None:
        """Return when the agent pushes a health change for ``service`` (or the link closes)."""
        waiter = self._health_waiters.get(service)
        if waiter is None:
            waiter = self._health_waiters[service] = anyio.Event()
        if self._closed.is_set():
            # Still a checkpoint (trio's rule for every async call): a caller looping
            # on a closed link must not starve the event loop.
            await anyio.lowlevel.checkpoint()
            return
        await waiter.wait()

    async def shutdown(self, *, reboot: bool = False, timeout: float = 10.0) -> None:
        """Ask the guest to sync and power off (or reboot)."""
        await self._call("shutdown", timeout=timeout, reboot=reboot)

    async def identity(
        self,
        hostname: str,
        machine_id: str,
        seed: bytes,
        *,
        net: str | None = None,
        timeout: float = 10.0,
    ) -> dict[str, Any]:
        """Give a restored clone its own hostname, machine-id and RNG seed, and with
        ``net`` ("MAC,IP/PREFIX,GATEWAY") re-address its TAP NIC.

        Answers once /init applied them; the reply carries the values the guest now
        reports (``hostname``, ``machine_id``, ``net``), as every later hello does."""
        fields: dict[str, Any] = {
            "hostname": hostname,
            "machine_id": machine_id,
            "seed": base64.b64encode(seed).decode(),
        }
        if net is not None:
            fields["net"] = net
        return await self._call("identity", timeout=timeout, **fields)

    async def service(
        self, name: str, action: str, *, sig: int | None = None, timeout: float = 10.0
    ) -> None:
        """Ask /init (through the agent) to ``restart`` or ``kill`` a supervised service."""
        fields: dict[str, Any] = {"name": name, "action": action}
        if sig is not None:
            fields["sig"] = sig
        await self._call("service", timeout=timeout, **fields)

    async def logs(self, service: str | None = None, timeout: float = 30.0) -> list[LogLine]:
        """The service logs collected so far (not following)."""
        lines: list[LogLine] = []
        async with self.follow_logs(service, follow=False) as stream:
            with anyio.fail_after(timeout):
                async for line in stream:
                    lines.append(line)
        return lines

    @asynccontextmanager
    async def follow_logs(
        self, service: str | None = None, *, follow: bool = True
    ) -> AsyncIterator[AsyncIterator[LogLine]]:
        """``async with client.follow_logs() as lines``: the services' log lines (of
        ``service`` only, if given), then new ones as they come unless ``follow=False``."""
        fields: dict[str, Any] = {"follow": follow}
        if service is not None:
            fields["service"] = service
        channel = await self.open_channel("logs", **fields)

        async def lines() -> AsyncIterator[LogLine]:
            while True:
                message = await channel.next()
                if message["t"] == "end":
                    return
                if message["t"] == "log":
                    yield LogLine(str(message.get("service", "")), str(message.get("line", "")))

        try:
            yield lines()
        finally:
            with anyio.CancelScope(shield=True), suppress(AgentError):
                if follow and not self.closed:
                    await self.send_frame({"t": "close", "id": channel.id})
            self.forget(channel.id)

    @asynccontextmanager
    async def open_exec(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        stdin: bool = False,
        pty: bool = False,
        rows: int = 24,
        cols: int = 80,
    ) -> AsyncIterator[ExecSession]:
        """A running guest process with streamed stdin/stdout/stderr (and a PTY if asked)."""
        fields: dict[str, Any] = {"argv": list(argv), "stdin": stdin or pty}
        if env:
            fields["env"] = env
        if cwd:
            fields["cwd"] = cwd
        if pty:
            fields.update(pty=True, rows=rows, cols=cols)
        channel = await self.open_channel("exec", **fields)
        try:
            started = await channel.next()
            session = ExecSession(channel, pid=int(started.get("pid", 0)))
            yield session
        finally:
            with anyio.CancelScope(shield=True):
                await channel.close()

    @asynccontextmanager
    async def open_console(
        self, *, rows: int = 24, cols: int = 80, env: dict[str, str] | None = None
    ) -> AsyncIterator[ExecSession]:
        """The image's console shell (its shell entrypoint, else busybox sh) on a PTY,
        as the entrypoint's uid. Sealed images refuse it with E_SEALED."""
        fields: dict[str, Any] = {"rows": rows, "cols": cols}
        if env:
            fields["env"] = env
        channel = await self.open_channel("console", **fields)
        try:
            started = await channel.next()
            yield ExecSession(channel, pid=int(started.get("pid", 0)))
        finally:
            with anyio.CancelScope(shield=True):
                await channel.close()

    async def uids(self, timeout: float = 10.0) -> dict[str, Any]:
        """What the guest's /proc says the agent, entrypoint and services run as."""
        return await self._call("uids", timeout=timeout)

    async def exec(
        self,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
    ) -> ExecResult:
        """Run a command in the guest to completion and collect its output."""
        out: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        async with self.open_exec(argv, env=env, cwd=cwd, stdin=stdin is not None) as proc:
            with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
                async with anyio.create_task_group() as tg:
                    if stdin is not None:
                        tg.start_soon(proc.feed_stdin, stdin)
                    async for fd, data in proc.output():
                        out.setdefault(fd, bytearray()).extend(data)
            if scope.cancelled_caught:
                with anyio.CancelScope(shield=True), suppress(AgentError):
                    await proc.kill(9)
                raise RequestTimeout(
                    f"command {list(argv)[:1]} did not finish within {timeout}s",
                    code="E_EXEC_TIMEOUT",
                )
        return ExecResult(proc.exit_code, proc.exit_signal, bytes(out[1]), bytes(out[2]))

    @asynccontextmanager
    async def open_run(self, *, mode: str = "oneshot") -> AsyncIterator[ExecSession]:
        """The image's baked function entrypoint (run-entrypoint), stdin streamed from here.

        Allowed on sealed images: the guest picks the program (its wrapper file), the
        host only the mode (``oneshot`` or ``longrunning``)."""
        channel = await self.open_channel("run", mode=mode)
        try:
            started = await channel.next()
            yield ExecSession(channel, pid=int(started.get("pid", 0)))
        finally:
            with anyio.CancelScope(shield=True):
                await channel.close()

    async def run(self, stdin: bytes, *, timeout: float | None = None) -> ExecResult:
        """One oneshot run of the function entrypoint with ``stdin``, collected."""
        out: dict[int, bytearray] = {1: bytearray(), 2: bytearray()}
        async with self.open_run() as proc:
            with anyio.move_on_after(math.inf if timeout is None else timeout) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(proc.feed_stdin, stdin)
                    async for fd, data in proc.output():
                        out.setdefault(fd, bytearray()).extend(data)
            if scope.cancelled_caught:
                with anyio.CancelScope(shield=True), suppress(AgentError):
                    await proc.kill(9)
                raise RequestTimeout(
                    f"the function did not finish within {timeout}s", code="E_INVOKE_TIMEOUT"
                )
        return ExecResult(proc.exit_code, proc.exit_signal, bytes(out[1]), bytes(out[2]))

    async def open_tcp(self, port: int, timeout: float = 10.0) -> AgentStream:
        """A byte stream to 127.0.0.1:port inside the guest (a port forward's guest leg)."""
        channel = await self.open_channel("connect", port=port)
        try:
            with anyio.fail_after(timeout):
                await channel.next()
        except TimeoutError:
            await channel.close()
            raise RequestTimeout(
                f"guest agent did not open port {port} within {timeout:.0f}s", code="E_TIMEOUT"
            ) from None
        except BaseException:
            await channel.close()
            raise
        return AgentStream(channel)
