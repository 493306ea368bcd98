"""Host side of function invocation: encode ``[args, kwargs]``, run the guest's wrapper
through the agent's ``run`` (run-entrypoint), decode the reply envelope.

Two ways to call:

* :func:`invoke` — one ``run`` in ``oneshot`` mode per call (a cold call: the guest
  starts an interpreter and imports the function every time);
* :class:`WarmPool` — N ``run`` sessions in ``longrunning`` mode held open on one
  agent connection; each call is one length-prefixed request on an idle
  session's stdin and one reply on its stdout. We chose host-side sessions over
  an agent-side process pool: the agent stays a dumb process spawner, a session
  dies with its connection (no orphaned interpreters), and the pool's size is
  the host's decision (the IR's ``mvm.concurrency`` extension by default).

Replies are decoded as strictly as requests are in the guest (the same decoder):
the guest is not trusted to send well-formed JSON.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from mvm.backends.guest import wrapper
from mvm.backends.guest.client import AgentClient
from mvm.backends.guest.streams import ExecSession
from mvm.engine.base.errors import AgentError, ConfigError, MvmError, RequestTimeout
from mvm.engine.base.log import get_logger
from mvm.engine.images.invoke_schema import FunctionSchemas, check_args, check_result

log = get_logger("mvm.invoke")

_LEN = struct.Struct(">I")
_HEADER = struct.Struct(">IB")  # reply frames: length, status (0 value, 1 error)
DEFAULT_TIMEOUT = 60.0


class FunctionError(MvmError):
    """The function (or the wrapper in front of it) answered with an error envelope.
    ``code`` is the guest's: E_FUNCTION_FAILED, E_FUNCTION_ARGS, E_INPUT_*, ..."""

    code = "E_FUNCTION_FAILED"

    def __init__(self, code: str, message: str, *, error_type: str, traceback: str | None) -> None:
        super().__init__(message, code=code)
        self.error_type = error_type
        self.traceback = traceback


def encode_request(args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        data = json.dumps([list(args), kwargs], allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"arguments are not JSON-encodable: {exc}", code="E_INVOKE_ARGS"
        ) from None
    if len(data) > wrapper.MAX_INPUT:
        raise ConfigError(
            f"arguments are {len(data)} bytes (limit {wrapper.MAX_INPUT})", code="E_INVOKE_ARGS"
        )
    return data


def parse_inputs(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` pairs to kwargs; a value that parses as JSON is that value, else a string."""
    kwargs: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--input {pair!r} is not NAME=VALUE", code="E_INVOKE_ARGS")
        if key in kwargs:
            raise ConfigError(f"--input {key} given twice", code="E_INVOKE_ARGS")
        try:
            kwargs[key] = wrapper.decode_json(value.encode())
        except wrapper.WrapperError:
            kwargs[key] = value
    return kwargs


def parse_request_file(data: bytes) -> tuple[list[Any], dict[str, Any]]:
    """``--json FILE``: ``[args, kwargs]``, checked with the guest's own decoder."""
    try:
        return wrapper.decode_request(data)
    except wrapper.WrapperError as exc:
        raise ConfigError(exc.message, code=exc.code) from None


def _function_error(envelope: bytes) -> FunctionError:
    """A FunctionError from the wrapper's ``{"error": {code, type, message, traceback?}}``."""
    try:
        doc = wrapper.decode_json(envelope)
    except wrapper.WrapperError as exc:
        raise AgentError(
            f"malformed error envelope from the guest: {exc.message}", code="E_INVOKE_REPLY"
        ) from None
    error = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(error, dict):
        raise AgentError("malformed error envelope from the guest", code="E_INVOKE_REPLY")
    code = str(error.get("code") or "E_FUNCTION_FAILED")
    if not code.startswith("E_") or not code[2:].replace("_", "").isalnum():
        code = "E_FUNCTION_FAILED"
    tb = error.get("traceback")
    return FunctionError(
        code,
        str(error.get("message", "")),
        error_type=str(error.get("type", "")),
        traceback=tb if isinstance(tb, str) else None,
    )


def decode_value(data: bytes) -> Any:
    """The encoded return value (the seed's protocol: not wrapped)."""
    try:
        return wrapper.decode_json(data)
    except wrapper.WrapperError as exc:
        raise AgentError(
            f"malformed reply from the guest: {exc.message}", code="E_INVOKE_REPLY"
        ) from None


def decode_reply(exit_code: int | None, stdout: bytes, stderr: bytes = b"") -> Any:
    """A oneshot run: exit 0 -> stdout is the value; otherwise the last stderr line is
    the error envelope (user prints land on stderr before it), else E_INVOKE_NO_REPLY."""
    if exit_code == 0 and stdout.strip():
        return decode_value(stdout.strip())
    lines = stderr.decode(errors="replace").strip().splitlines()
    if exit_code not in (0, None) and lines and lines[-1].startswith('{"error"'):
        raise _function_error(lines[-1].encode())
    tail = lines[-3:]
    raise AgentError(
        f"the function wrapper gave no reply (exit {exit_code})"
        + (f": {' | '.join(tail)}" if tail else ""),
        code="E_INVOKE_NO_REPLY",
    )


def decode_frame(status: int, body: bytes) -> Any:
    """A longrunning reply frame: status 0 -> the value, 1 -> the error envelope."""
    if status == 0:
        return decode_value(body)
    raise _function_error(body)


async def invoke(
    client: AgentClient,
    args: list[Any] | tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    schemas: FunctionSchemas | None = None,
) -> Any:
    """One cold call: a fresh wrapper process in the guest. ``schemas``: the IR's
    args/return schemas, enforced on both sides of the call (engine/images/invoke_schema.py)."""
    check_args(schemas, args, kwargs or {})
    request = encode_request(args, kwargs or {})
    result = await client.run(request, timeout=timeout)
    return check_result(schemas, decode_reply(result.code, result.stdout, result.stderr))


class _Session:
    """One long-running wrapper: framed request out, framed reply back."""

    def __init__(self, proc: ExecSession) -> None:
        self.proc = proc
        self._chunks: AsyncIterator[tuple[int, bytes]] = proc.output()
        self._buf = bytearray()
        self._err = bytearray()

    async def _fill(self, n: int) -> None:
        while len(self._buf) < n:
            try:
                fd, data = await self._chunks.__anext__()
            except StopAsyncIteration:
                last = bytes(self._err).strip().splitlines()[-1:]
                if last and last[0].startswith(b'{"error"'):
                    raise _function_error(last[0]) from None  # e.g. E_WRAPPER_MODE
                raise AgentError(
                    f"the warm wrapper exited (code {self.proc.exit_code})",
                    code="E_INVOKE_NO_REPLY",
                ) from None
            if fd == 1:
                self._buf.extend(data)
            else:
                self._err = (self._err + data)[-4096:]
                log.debug("invoke.stderr", pid=self.proc.pid, data=data[:200])

    async def call(self, request: bytes) -> tuple[int, bytes]:
        await self.proc.write(_LEN.pack(len(request)) + request)
        await self._fill(_HEADER.size)
        n, status = _HEADER.unpack(self._buf[: _HEADER.size])
        if n > wrapper.MAX_OUTPUT + 1024:
            raise AgentError(f"warm wrapper announced a {n}-byte reply", code="E_INVOKE_REPLY")
        await self._fill(_HEADER.size + n)
        body = bytes(self._buf[_HEADER.size : _HEADER.size + n])
        del self._buf[: _HEADER.size + n]
        return status, body


_Reply = tuple[int, bytes] | BaseException
_Job = tuple[bytes, "MemoryObjectSendStream[_Reply]"]


class WarmPool:
    """``size`` long-running wrapper sessions; calls go to whichever is idle.

    Use ``async with WarmPool.open(client, size) as pool: await pool.invoke(...)``.
    A session whose wrapper dies fails the call that was on it and is replaced."""

    def __init__(self, jobs: MemoryObjectSendStream[_Job], size: int) -> None:
        self._jobs = jobs
        self.size = size
        self.ready = 0

    @classmethod
    @asynccontextmanager
    async def open(
        cls, client: AgentClient, size: int, *, warm_timeout: float = DEFAULT_TIMEOUT
    ) -> AsyncIterator[WarmPool]:
        """Start the sessions and wait until each has answered one warm-up request
        (so the interpreter start and the import are paid before the first call)."""
        if not 1 <= size <= 64:
            raise ConfigError(f"warm pool size {size} out of range 1..64", code="E_INVOKE_POOL")
        send, receive = anyio.create_memory_object_stream[_Job](math.inf)
        pool = cls(send, size)
        async with anyio.create_task_group() as tg:
            with anyio.fail_after(warm_timeout):
                for _ in range(size):
                    await tg.start(pool._worker, client, receive.clone())
            try:
                yield pool
            finally:
                tg.cancel_scope.cancel()
                send.close()
                receive.close()

    async def _worker(
        self,
        client: AgentClient,
        jobs: MemoryObjectReceiveStream[_Job],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        with jobs:
            while True:
                async with client.open_run(mode="longrunning") as proc:
                    session = _Session(proc)
                    status, body = await session.call(b"")  # warm-up: the guest imports it
                    if status != 0:
                        raise _function_error(body)
                    if not started:
                        started = True
                        self.ready += 1
                        task_status.started()
                    async for request, reply_to in jobs:
                        try:
                            reply: _Reply = await session.call(request)
                        except MvmError as exc:
                            reply = exc
                        with reply_to:
                            await reply_to.send(reply)
                        if isinstance(reply, BaseException):
                            break  # a broken session: start a fresh one
                    else:
                        return

    async def invoke(
        self,
        args: list[Any] | tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        schemas: FunctionSchemas | None = None,
    ) -> Any:
        check_args(schemas, args, kwargs or {})
        request = encode_request(args, kwargs or {})
        send, receive = anyio.create_memory_object_stream[_Reply](1)
        with receive:
            await self._jobs.send((request, send))
            with anyio.move_on_after(timeout) as scope:
                reply = await receive.receive()
            if scope.cancelled_caught:
                raise RequestTimeout(
                    f"the function did not answer within {timeout}s", code="E_INVOKE_TIMEOUT"
                )
        if isinstance(reply, BaseException):
            raise reply
        return check_result(schemas, decode_frame(*reply))
