"""mvm function wrapper: runs inside the guest, between the agent's `run` and the user's code.

Standard library only (the guest has a bare CPython and nothing else), and no
mvm imports: this file is copied into images verbatim.

The seed's dispatch protocol (workload-ir-to-image, "The dispatch protocol"):

* stdin is the encoded ``[positional_args, keyword_args]`` (format ``json``);
* the return value is encoded *directly* on stdout (not wrapped), exit 0;
* on error a sanitized envelope ``{"error": {"code": "E_...", "type", "message",
  "traceback"?}}`` is the last line on stderr, exit 1 (prod: no traceback, no file
  paths, no payload bytes; dev keeps the traceback).

The wrapper's own config is ``/etc/mvm/wrapper.json`` = ``{module, function, format,
working_dir, mode}`` (mode "prod" or "dev"). The image bakes this file in as
``/usr/lib/mvm/wrappers/runner`` with a variant (``--variant oneshot|longrunning``,
picked at build time: longrunning iff the IR's entrypoint has a concurrency block).
What the caller wants comes from ``MVM_RUN_MODE`` (set by the agent's ``run``):

* ``oneshot``: the whole of stdin is one call. ``os.chdir(working_dir)`` and the
  ``sys.path`` insert happen once and are never undone, so a second call in the same
  process is a hard error (``E_WRAPPER_REUSED``).
* ``longrunning`` (longrunning variant only): frames of a 4-byte big-endian length +
  a 1-byte status (0: the body is the encoded return value; 1: the error envelope)
  until stdin ends; an empty request is a warm-up (load the function). A warm pool
  keeps these open so the interpreter start and the import are paid once.
* unset (what /init runs at boot through /etc/mvm/entrypoint): import the function
  once (so a broken app shows on the console), then become ``sleep``.

In prod the process is made non-dumpable (``PR_SET_DUMPABLE=0`` via ctypes: no core
files, no ptrace by the same uid) and stdin is capped at 16 MiB.

The request decoder is the guest's attack surface, so it is strict and bounded:
16 MiB, nesting depth 64 (checked by a linear scan *before* parsing, so no
recursion limit can be hit), no duplicate keys, no NaN/Infinity and no float that
overflows to one. Every failure is a coded envelope, never a crash. In ``prod``
mode (sealed images) errors carry no traceback and no file system paths.
"""

from __future__ import annotations

import asyncio
import contextlib
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

WRAPPER_JSON = "/etc/mvm/wrapper.json"
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
E_WRAPPER_REUSED = "E_WRAPPER_REUSED"
E_WRAPPER_MODE = "E_WRAPPER_MODE"

# Absolute paths in messages ("/srv/app/app.py", "/usr/lib/python3.11/json/decoder.py").
_PATH = re.compile(r"(?<![\w.~-])/(?:[\w.@+~-]+/)*[\w.@+~-]+")
_HEADER = struct.Struct(">IB")  # body length, status (0 ok, 1 error)
PR_SET_DUMPABLE = 4


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
            raise WrapperError(E_INPUT_DUPLICATE_KEY, "duplicate key in input")
        out[key] = value
    return out


def _no_constant(name: str) -> NoReturn:
    raise WrapperError(E_INPUT_NONFINITE, f"{name} is not allowed in input")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise WrapperError(E_INPUT_NONFINITE, f"a number in input overflows to {value}")
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
        kind = type(exc).__name__
        raise WrapperError(E_INPUT_JSON, f"input is not valid JSON ({kind})") from None


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
    """``{"error": {code, type, message, traceback?}}``; prod strips paths and traceback."""
    cause = err.cause
    message = err.message
    if prod:
        # No payload bytes and no paths: an exception's text may quote either.
        message = (
            f"{type(cause).__name__} (details withheld in prod images)"
            if cause is not None
            else _strip_paths(message)
        )
    if len(message) > MAX_MESSAGE:
        message = message[:MAX_MESSAGE] + "..."
    body: dict[str, Any] = {
        "code": err.code,
        "type": type(cause).__name__ if cause is not None else "WrapperError",
        "message": message,
    }
    if cause is not None and not prod:
        body["traceback"] = "".join(traceback.format_exception(cause))
    return {"error": body}


def encode_envelope(err: WrapperError, *, prod: bool) -> bytes:
    return json.dumps(error_envelope(err, prod=prod), separators=(",", ":")).encode()


def encode_result(value: Any) -> bytes:
    """The return value encoded directly; raises WrapperError when it cannot be."""
    try:
        data = json.dumps(value, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise WrapperError(E_RESULT_ENCODE, f"result is not JSON-encodable: {exc}") from None
    if len(data) > MAX_OUTPUT:
        raise WrapperError(E_RESULT_TOO_LARGE, f"result is {len(data)} bytes (limit {MAX_OUTPUT})")
    return data


# ------------------------------------------------------------------------- calling


class Runtime:
    """The function named by wrapper.json, loaded once per process."""

    def __init__(self, config: dict[str, Any], *, variant: str = "longrunning") -> None:
        self.config = config
        self.prod = config.get("mode", "prod") != "dev"
        self.variant = variant
        self.working_dir = str(config.get("working_dir") or "/app")
        self._fn: Callable[..., Any] | None = None
        self._calls = 0

    @classmethod
    def from_file(cls, path: str, *, variant: str = "longrunning") -> "Runtime":  # noqa: UP037 (quoted: the runner drops the __future__ import)
        try:
            with open(path, "rb") as f:
                config = json.loads(f.read(1 << 20))
        except (OSError, ValueError) as exc:
            raise WrapperError(E_WRAPPER_CONFIG, f"cannot read {path}: {exc}") from None
        if not isinstance(config, dict) or not all(
            isinstance(config.get(k), str) for k in ("module", "function")
        ):
            raise WrapperError(E_WRAPPER_CONFIG, f"{path} must name a module and a function")
        if config.get("format", "json") != "json":
            raise WrapperError(
                E_WRAPPER_CONFIG, f"format {config.get('format')!r}: this wrapper speaks json"
            )
        return cls(config, variant=variant)

    def function(self) -> Callable[..., Any]:
        if self._fn is None:
            # Once per process, never undone (the oneshot contract).
            with contextlib.suppress(OSError):
                os.chdir(self.working_dir)
            if self.working_dir not in sys.path:
                sys.path.insert(0, self.working_dir)
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

    def warm_up(self) -> tuple[bool, bytes]:
        """An empty request: load the function without calling it."""
        try:
            self.function()
            return True, b"null"
        except WrapperError as err:
            return False, encode_envelope(err, prod=self.prod)

    def handle(self, data: bytes) -> tuple[bool, bytes]:
        """One call: (True, encoded return value) or (False, encoded error envelope).
        Never raises for bad input or a failing function."""
        try:
            self._calls += 1
            if self.variant == "oneshot" and self._calls > 1:
                raise WrapperError(
                    E_WRAPPER_REUSED,
                    "the oneshot wrapper dispatches once per process (second invocation)",
                )
            args, kwargs = decode_request(data)
            return True, encode_result(self.call(args, kwargs))
        except WrapperError as err:
            return False, encode_envelope(err, prod=self.prod)


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


def serve_oneshot(runtime: Runtime, stdin: BinaryIO, stdout: BinaryIO, stderr: BinaryIO) -> int:
    """Read at most 16 MiB + 1 (the cap), dispatch once, value on stdout or envelope on stderr."""
    data = stdin.read(MAX_INPUT + 1)
    ok, body = runtime.handle(data)
    if ok:
        stdout.write(body)
        stdout.flush()
        return 0
    stderr.write(b"\n" + body + b"\n")
    stderr.flush()
    return 1


def serve_longrunning(runtime: Runtime, stdin: BinaryIO, stdout: BinaryIO) -> int:
    size = struct.calcsize(">I")
    while (header := _read_exact(stdin, size)) is not None:
        (n,) = struct.unpack(">I", header)
        if n > MAX_INPUT:
            err = WrapperError(E_INPUT_TOO_LARGE, f"input is {n} bytes (limit {MAX_INPUT})")
            ok, reply = False, encode_envelope(err, prod=runtime.prod)
            if not _discard(stdin, n):
                return 0
        elif n == 0:
            ok, reply = runtime.warm_up()
        else:
            body = _read_exact(stdin, n)
            if body is None:
                return 0
            ok, reply = runtime.handle(body)
        stdout.write(_HEADER.pack(len(reply), 0 if ok else 1) + reply)
        stdout.flush()
    return 0


def boot(runtime: Runtime) -> NoReturn:
    try:
        runtime.function()
        print("mvm-function: ready", file=sys.stderr, flush=True)
    except WrapperError as err:
        msg = _strip_paths(err.message) if runtime.prod else err.message
        print(f"mvm-function: {err.code}: {msg}", file=sys.stderr, flush=True)
    sys.stderr.flush()
    os.execv("/bin/sleep", ["sleep", "2147483647"])


def harden() -> bool:
    """prod: PR_SET_DUMPABLE=0 through libc's prctl (no core dump, no same-uid ptrace)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError, ImportError):
        return False


def _private_stdout() -> BinaryIO:
    """The reply channel, moved off fd 1 so that the user's prints (Python or C level)
    land on stderr instead of corrupting the reply stream."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out


def main(argv: list[str]) -> int:
    mode = os.environ.get("MVM_RUN_MODE", "boot")
    config = os.environ.get("MVM_WRAPPER_JSON", WRAPPER_JSON)
    variant = "longrunning"
    rest = argv[1:]
    while rest:
        if rest[0] == "--boot":
            mode = "boot"
            rest = rest[1:]
        elif rest[0] in ("--mode", "--config", "--variant") and len(rest) > 1:
            if rest[0] == "--mode":
                mode = rest[1]
            elif rest[0] == "--variant":
                variant = rest[1]
            else:
                config = rest[1]
            rest = rest[2:]
        else:
            print(
                "usage: runner [--variant oneshot|longrunning] [--mode oneshot|longrunning]"
                " [--config FILE]",
                file=sys.stderr,
            )
            return 2
    err_out = sys.stderr.buffer
    try:
        runtime = Runtime.from_file(config, variant=variant)
    except WrapperError as exc:
        err_out.write(encode_envelope(exc, prod=True) + b"\n")
        return 2
    if runtime.prod:
        harden()
    if mode == "boot":
        boot(runtime)
    if mode not in ("oneshot", "longrunning") or (mode == "longrunning" and variant == "oneshot"):
        refusal = WrapperError(
            E_WRAPPER_MODE,
            f"mode {mode!r} is not served by the {variant} wrapper"
            + (" (the IR's entrypoint has no concurrency block)" if variant == "oneshot" else ""),
        )
        err_out.write(encode_envelope(refusal, prod=runtime.prod) + b"\n")
        return 2
    out = _private_stdout()
    stdin = sys.stdin.buffer
    if mode == "longrunning":
        return serve_longrunning(runtime, stdin, out)
    return serve_oneshot(runtime, stdin, out, err_out)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
