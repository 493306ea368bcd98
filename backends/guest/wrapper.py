"""mvm function wrapper: runs inside the guest, between the agent's `run` and the user's code.

Standard library only (the guest has a bare CPython and nothing else), and no
mvm imports: this file is copied into images verbatim.

Wire contract (PROTOCOL.md, "run-entrypoint"):

* request: the UTF-8 JSON document ``[args, kwargs]`` (a list and an object);
* reply: ``{"ok": true, "result": R}`` or
  ``{"ok": false, "error": {"code": "E_...", "type": str, "message": str, "traceback"?: str}}``.

Modes (``MVM_RUN_MODE``, set by the agent, or ``--mode``):

* ``oneshot``: the whole of stdin is one request; one reply on stdout (plus a newline).
* ``longrunning``: requests and replies are framed as a 4-byte big-endian length
  followed by the JSON body, until stdin ends; an empty request is a warm-up
  (load the function, reply ``{"ok": true, "result": null}``). A warm pool keeps
  these open so the interpreter start and the import are paid once, not per call.
* ``--boot``: what /init runs at boot: import the function once (so a broken app
  shows up on the console right away), then become ``sleep`` so no interpreter
  stays resident.

The request decoder is the guest's attack surface, so it is strict and bounded:
16 MiB, nesting depth 64 (checked by a linear scan *before* parsing, so no
recursion limit can be hit), no duplicate keys, no NaN/Infinity and no float that
overflows to one. Every failure is a coded envelope, never a crash. In ``prod``
mode (sealed images) errors carry no traceback and no file system paths.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import math
import os
import re
import struct
import sys
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO, NoReturn

RUNTIME_JSON = "/etc/mvm/runtime.json"
MAX_INPUT = 16 * 1024 * 1024
MAX_OUTPUT = 16 * 1024 * 1024
MAX_DEPTH = 64
MAX_MESSAGE = 2048

E_INPUT_TOO_LARGE = "E_INPUT_TOO_LARGE"
E_INPUT_JSON = "E_INPUT_JSON"
E_INPUT_DEPTH = "E_INPUT_DEPTH"
E_INPUT_DUPLICATE_KEY = "E_INPUT_DUPLICATE_KEY"
E_INPUT_NONFINITE = "E_INPUT_NONFINITE"
E_INPUT_SHAPE = "E_INPUT_SHAPE"
E_FUNCTION_LOAD = "E_FUNCTION_LOAD"
E_FUNCTION_ARGS = "E_FUNCTION_ARGS"
E_FUNCTION_FAILED = "E_FUNCTION_FAILED"
E_RESULT_ENCODE = "E_RESULT_ENCODE"
E_RESULT_TOO_LARGE = "E_RESULT_TOO_LARGE"
E_WRAPPER_CONFIG = "E_WRAPPER_CONFIG"

# Absolute paths in messages ("/srv/app/app.py", "/usr/lib/python3.11/json/decoder.py").
_PATH = re.compile(r"(?<![\w.~-])/(?:[\w.@+~-]+/)*[\w.@+~-]+")
_HEADER = struct.Struct(">I")


class WrapperError(Exception):
    """A failure with a stable code; becomes the reply's error envelope."""

    def __init__(self, code: str, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.cause = cause


# ------------------------------------------------------------------------- decoding


def _check_depth(text: str) -> None:
    """Reject nesting deeper than MAX_DEPTH without recursing (strings are skipped)."""
    depth = 0
    in_string = False
    escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise WrapperError(E_INPUT_DEPTH, f"input nested deeper than {MAX_DEPTH} levels")
        elif ch in "]}":
            depth -= 1


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise WrapperError(E_INPUT_DUPLICATE_KEY, f"duplicate key {key[:64]!r} in input")
        out[key] = value
    return out


def _no_constant(name: str) -> NoReturn:
    raise WrapperError(E_INPUT_NONFINITE, f"{name} is not allowed in input")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise WrapperError(E_INPUT_NONFINITE, f"number {text[:32]} overflows to {value}")
    return value


def decode_json(data: bytes) -> Any:
    """Strict, bounded JSON decoding; raises WrapperError only."""
    if len(data) > MAX_INPUT:
        raise WrapperError(E_INPUT_TOO_LARGE, f"input is {len(data)} bytes (limit {MAX_INPUT})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise WrapperError(E_INPUT_JSON, f"input is not UTF-8 (byte {exc.start})") from None
    _check_depth(text)
    try:
        return json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constant,
            parse_float=_finite_float,
        )
    except WrapperError:
        raise
    except RecursionError:  # unreachable after _check_depth; kept so it cannot crash
        raise WrapperError(E_INPUT_DEPTH, "input nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ints over the digit limit
        raise WrapperError(E_INPUT_JSON, f"input is not valid JSON: {exc}") from None


def decode_request(data: bytes) -> tuple[list[Any], dict[str, Any]]:
    """``[args, kwargs]`` from the wire."""
    doc = decode_json(data)
    if (
        not isinstance(doc, list)
        or len(doc) != 2
        or not isinstance(doc[0], list)
        or not isinstance(doc[1], dict)
    ):
        raise WrapperError(E_INPUT_SHAPE, "input must be [args, kwargs]: a list and an object")
    return doc[0], doc[1]


# ------------------------------------------------------------------------- errors


def _strip_paths(text: str) -> str:
    return _PATH.sub("<path>", text)


def error_envelope(err: WrapperError, *, prod: bool) -> dict[str, Any]:
    cause = err.cause
    message = err.message
    if prod:
        message = _strip_paths(message)
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    body: dict[str, Any] = {
        "code": err.code,
        "type": type(cause).__name__ if cause is not None else "WrapperError",
        "message": message,
    }
    if cause is not None and not prod:
        body["traceback"] = "".join(traceback.format_exception(cause))
    return {"ok": False, "error": body}


def encode_reply(reply: dict[str, Any], *, prod: bool) -> bytes:
    """JSON bytes of a reply; a result that cannot be encoded becomes a coded error."""
    try:
        data = json.dumps(reply, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        err = WrapperError(E_RESULT_ENCODE, f"result is not JSON-encodable: {exc}")
        return json.dumps(error_envelope(err, prod=prod)).encode()
    if len(data) > MAX_OUTPUT:
        err = WrapperError(E_RESULT_TOO_LARGE, f"result is {len(data)} bytes (limit {MAX_OUTPUT})")
        return json.dumps(error_envelope(err, prod=prod)).encode()
    return data


# ------------------------------------------------------------------------- calling


class Runtime:
    """The function named by runtime.json, loaded once per process."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.prod = config.get("mode", "prod") != "dev"
        self._fn: Callable[..., Any] | None = None

    @classmethod
    def from_file(cls, path: str) -> Runtime:
        try:
            with open(path, "rb") as f:
                config = json.loads(f.read(1 << 20))
        except (OSError, ValueError) as exc:
            raise WrapperError(E_WRAPPER_CONFIG, f"cannot read {path}: {exc}") from None
        if not isinstance(config, dict) or not all(
            isinstance(config.get(k), str) for k in ("module", "function")
        ):
            raise WrapperError(E_WRAPPER_CONFIG, f"{path} must name a module and a function")
        return cls(config)

    def function(self) -> Callable[..., Any]:
        if self._fn is None:
            app_dir = self.config.get("app_dir")
            if isinstance(app_dir, str) and app_dir not in sys.path:
                sys.path.insert(0, app_dir)
            name = f"{self.config['module']}.{self.config['function']}"
            try:
                fn = getattr(
                    importlib.import_module(self.config["module"]), self.config["function"]
                )
            except Exception as exc:
                raise WrapperError(
                    E_FUNCTION_LOAD, f"cannot load {name}: {exc}", cause=exc
                ) from None
            if not callable(fn):
                raise WrapperError(E_FUNCTION_LOAD, f"{name} is not callable")
            self._fn = fn
        return self._fn

    def call(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
        fn = self.function()
        try:
            inspect.signature(fn).bind(*args, **kwargs)
        except TypeError as exc:
            raise WrapperError(E_FUNCTION_ARGS, f"bad arguments: {exc}") from None
        except ValueError:  # no signature (some builtins): let the call decide
            pass
        try:
            result = fn(*args, **kwargs)
            if inspect.iscoroutine(result):
                result = asyncio.run(result)
        except Exception as exc:
            raise WrapperError(
                E_FUNCTION_FAILED, f"{type(exc).__name__}: {exc}", cause=exc
            ) from None
        return result

    def warm_up(self) -> bytes:
        """Reply to an empty request: load the function without calling it."""
        try:
            self.function()
            reply: dict[str, Any] = {"ok": True, "result": None}
        except WrapperError as err:
            reply = error_envelope(err, prod=self.prod)
        return encode_reply(reply, prod=self.prod)

    def handle(self, data: bytes) -> bytes:
        """One request to one encoded reply; never raises for bad input or a failing function."""
        try:
            args, kwargs = decode_request(data)
            reply: dict[str, Any] = {"ok": True, "result": self.call(args, kwargs)}
        except WrapperError as err:
            reply = error_envelope(err, prod=self.prod)
        return encode_reply(reply, prod=self.prod)


# ------------------------------------------------------------------------- I/O


def _read_exact(stream: BinaryIO, n: int) -> bytes | None:
    """n bytes, or None at a clean EOF before the first byte (a torn read is EOF too)."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _discard(stream: BinaryIO, n: int) -> bool:
    while n > 0:
        chunk = stream.read(min(n, 1 << 20))
        if not chunk:
            return False
        n -= len(chunk)
    return True


def serve_oneshot(runtime: Runtime, stdin: BinaryIO, stdout: BinaryIO) -> int:
    data = stdin.read(MAX_INPUT + 1)
    reply = runtime.handle(data)
    stdout.write(reply + b"\n")
    stdout.flush()
    return 0 if reply.startswith(b'{"ok":true') else 1


def serve_longrunning(runtime: Runtime, stdin: BinaryIO, stdout: BinaryIO) -> int:
    while (header := _read_exact(stdin, _HEADER.size)) is not None:
        (n,) = _HEADER.unpack(header)
        if n > MAX_INPUT:
            err = WrapperError(E_INPUT_TOO_LARGE, f"input is {n} bytes (limit {MAX_INPUT})")
            reply = encode_reply(error_envelope(err, prod=runtime.prod), prod=runtime.prod)
            if not _discard(stdin, n):
                return 0
        elif n == 0:
            reply = runtime.warm_up()
        else:
            body = _read_exact(stdin, n)
            if body is None:
                return 0
            reply = runtime.handle(body)
        stdout.write(_HEADER.pack(len(reply)) + reply)
        stdout.flush()
    return 0


def boot(runtime: Runtime) -> NoReturn:
    try:
        runtime.function()
        print("mvm-function: ready", file=sys.stderr, flush=True)
    except WrapperError as err:
        print(f"mvm-function: {err.code}: {err.message}", file=sys.stderr, flush=True)
    sys.stderr.flush()
    os.execv("/bin/sleep", ["sleep", "2147483647"])


def _private_stdout() -> BinaryIO:
    """The reply channel, moved off fd 1 so that the user's prints (Python or C level)
    land on stderr instead of corrupting the reply stream."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def main(argv: list[str]) -> int:
    mode = os.environ.get("MVM_RUN_MODE", "oneshot")
    config = os.environ.get("MVM_RUNTIME_JSON", RUNTIME_JSON)
    rest = argv[1:]
    while rest:
        if rest[0] == "--boot":
            mode = "boot"
            rest = rest[1:]
        elif rest[0] in ("--mode", "--config") and len(rest) > 1:
            if rest[0] == "--mode":
                mode = rest[1]
            else:
                config = rest[1]
            rest = rest[2:]
        else:
            print(
                "usage: wrapper.py [--boot] [--mode oneshot|longrunning] [--config FILE]",
                file=sys.stderr,
            )
            return 2
    try:
        runtime = Runtime.from_file(config)
    except WrapperError as err:
        sys.stdout.write(json.dumps(error_envelope(err, prod=True)) + "\n")
        return 2
    if mode == "boot":
        boot(runtime)
    out = _private_stdout()
    stdin = sys.stdin.buffer
    if mode == "longrunning":
        return serve_longrunning(runtime, stdin, out)
    return serve_oneshot(runtime, stdin, out)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
