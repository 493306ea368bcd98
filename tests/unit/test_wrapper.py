"""The guest function wrapper: the seed's dispatch protocol (value on stdout, sanitized
error envelope on stderr), strict decoder, prod stripping, oneshot and longrunning.

The decoder is fuzzed with hypothesis: whatever bytes arrive, the wrapper answers
with a well-formed envelope and one of its own error codes, and never raises.
The modes run the real file as a subprocess, as the agent would.
"""

from __future__ import annotations

import itertools
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mvm.backends.guest import wrapper as w

HELLO = Path(__file__).resolve().parents[1] / "fixtures" / "hello"
WRAPPER = Path(w.__file__)
CODES = {v for k, v in vars(w).items() if k.startswith("E_")}


_modules = itertools.count()


def _runtime(
    tmp_path: Path, source: str | None = None, mode: str = "prod", **cfg: Any
) -> w.Runtime:
    # variant longrunning: these tests call handle() more than once per runtime
    """A runtime for the hello app, or for ``source`` as a fresh module (never cached)."""
    app_dir = HELLO
    if source is not None:
        app_dir = tmp_path / "app"
        app_dir.mkdir(exist_ok=True)
        name = f"fnmod{next(_modules)}"
        (app_dir / f"{name}.py").write_text(source)
        cfg.setdefault("module", name)
    config = {
        "module": "app",
        "function": "greet",
        "format": "json",
        "working_dir": str(app_dir),
        "mode": mode,
    }
    config.update(cfg)
    return w.Runtime(config)


def _reply(runtime: w.Runtime, body: bytes) -> dict[str, Any]:
    """The old two-armed view of a reply, for terse asserts: ok+result or the envelope."""
    ok, out = runtime.handle(body)
    decoded = json.loads(out)
    if ok:
        return {"ok": True, "result": decoded}
    assert set(decoded) == {"error"}, decoded
    return {"ok": False, **decoded}


def _code(body: bytes) -> str:
    with pytest.raises(w.WrapperError) as info:
        w.decode_request(body)
    code: str = info.value.code
    return code


# ------------------------------------------------------------------------- decoder


def test_decodes_args_and_kwargs() -> None:
    assert w.decode_request(b'[[1, "a"], {"name": "Alice", "n": 1.5}]') == (
        [1, "a"],
        {"name": "Alice", "n": 1.5},
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'[[], {"a": 1, "a": 2}]', w.E_INPUT_DUPLICATE_KEY),
        (b'[[{"x": {"k": 1, "k": 1}}], {}]', w.E_INPUT_DUPLICATE_KEY),
        (b"[[NaN], {}]", w.E_INPUT_NONFINITE),
        (b"[[Infinity], {}]", w.E_INPUT_NONFINITE),
        (b"[[-Infinity], {}]", w.E_INPUT_NONFINITE),
        (b"[[1e999], {}]", w.E_INPUT_NONFINITE),
        (b"[[-1e400], {}]", w.E_INPUT_NONFINITE),
        (b"[[], {}", w.E_INPUT_JSON),
        (b"\xff\xfe[]", w.E_INPUT_JSON),
        (b"", w.E_INPUT_JSON),
        (b"[[" + b"9" * 5000 + b"], {}]", w.E_INPUT_JSON),
        (b"{}", w.E_INPUT_SHAPE),
        (b"[[], []]", w.E_INPUT_SHAPE),
        (b"[{}, {}]", w.E_INPUT_SHAPE),
        (b"[[], {}, 1]", w.E_INPUT_SHAPE),
        (b'"hello"', w.E_INPUT_SHAPE),
    ],
)
def test_rejects_with_a_code(body: bytes, code: str) -> None:
    assert _code(body) == code


def test_depth_64_is_fine_and_65_is_not() -> None:
    def nested(depth: int) -> bytes:  # [args, kwargs] is 2 levels; args holds the rest
        inner = "[" * (depth - 2) + "]" * (depth - 2)
        return f"[[{inner}], {{}}]".encode()

    assert w.decode_request(nested(64))[0] == [json.loads("[" * 62 + "]" * 62)]
    assert _code(nested(65)) == w.E_INPUT_DEPTH
    # Far beyond the recursion limit: still a coded error, not a RecursionError.
    assert _code(b"[" * 200_000 + b"]" * 200_000) == w.E_INPUT_DEPTH


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    text = json.dumps([["[" * 100 + '\\"{' * 100], {"k": "}" * 50}]).encode()
    assert w.decode_request(text)[0][0].startswith("[[[")


def test_input_cap_is_16_mib() -> None:
    big = b'[["' + b"x" * (w.MAX_INPUT - 10) + b'"], {}]'
    assert len(big) <= w.MAX_INPUT
    assert len(w.decode_request(big)[0][0]) == w.MAX_INPUT - 10
    assert _code(big + b" " * 10) == w.E_INPUT_TOO_LARGE


# ------------------------------------------------------------------------- calling


def test_worked_example_greet(tmp_path: Path) -> None:
    rt = _runtime(tmp_path)
    assert _reply(rt, b'[[], {"name": "Alice"}]') == {"ok": True, "result": "hello, Alice"}
    assert _reply(rt, b'[["Bob"], {}]') == {"ok": True, "result": "hello, Bob"}


def test_bad_arguments_are_a_coded_error(tmp_path: Path) -> None:
    reply = _reply(_runtime(tmp_path), b'[[], {"nom": "x"}]')
    assert reply["ok"] is False
    assert reply["error"]["code"] == w.E_FUNCTION_ARGS


FAILING = """
def boom(path):
    raise ValueError(f"cannot open {path}/secret.txt")
"""


def test_prod_strips_paths_and_traceback(tmp_path: Path) -> None:
    reply = _reply(_runtime(tmp_path, FAILING, function="boom"), b'[["/srv/app/data"], {}]')
    assert reply == {
        "ok": False,
        "error": {
            "code": w.E_FUNCTION_FAILED,
            "type": "ValueError",
            "message": "ValueError (details withheld in prod images)",
        },
    }


def test_prod_envelope_has_no_payload_bytes_or_paths(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, FAILING, function="boom")
    for body in (
        b'[["SECRET-PAYLOAD"], {}]',
        b'[[], {"SECRET-PAYLOAD": 1, "SECRET-PAYLOAD": 2}]',
        b'[["SECRET-PAYLOAD", 1e999], {}]',
        b'[["SECRET-PAYLOAD"], {}',
    ):
        ok, out = rt.handle(body)
        assert not ok
        assert b"SECRET" not in out and b"/srv" not in out and b"Traceback" not in out
        assert "traceback" not in json.loads(out)["error"]


def test_dev_keeps_message_and_traceback(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, FAILING, mode="dev", function="boom")
    error = _reply(rt, b'[["/srv/app/data"], {}]')["error"]
    assert error["message"] == "ValueError: cannot open /srv/app/data/secret.txt"
    assert "fnmod" in error["traceback"] and "in boom" in error["traceback"]


def test_load_failure_and_unencodable_results(tmp_path: Path) -> None:
    missing = _reply(_runtime(tmp_path, "x = 1\n", function="nope"), b"[[], {}]")
    assert missing["error"]["code"] == w.E_FUNCTION_LOAD
    source = "def s():\n    return {1, 2}\n\ndef nan():\n    return float('nan')\n"
    for fn in ("s", "nan"):
        reply = _reply(_runtime(tmp_path, source, function=fn), b"[[], {}]")
        assert reply["error"]["code"] == w.E_RESULT_ENCODE


def test_async_functions_are_awaited(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, "async def f(x):\n    return x * 2\n", function="f")
    assert _reply(rt, b"[[21], {}]") == {"ok": True, "result": 42}


# ------------------------------------------------------------------------- fuzzing

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=20,
)


def _assert_envelope(reply: tuple[bool, bytes]) -> None:
    ok, out = reply
    value = json.loads(out)
    if not ok:
        assert set(value) == {"error"}
        assert value["error"]["code"] in CODES
        assert isinstance(value["error"]["message"], str)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _assert_envelope(_FUZZ_RT.handle(data))


@settings(max_examples=300, deadline=None)
@given(_json)
def test_fuzz_json_documents(doc: Any) -> None:
    _assert_envelope(_FUZZ_RT.handle(json.dumps(doc).encode()))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet='[]{}",:0123456789.eE+-\\ntrufalsNIiy', max_size=120))
def test_fuzz_json_like_text(text: str) -> None:
    _assert_envelope(_FUZZ_RT.handle(text.encode()))


_FUZZ_RT = w.Runtime(
    {"module": "app", "function": "greet", "working_dir": str(HELLO), "mode": "prod"}
)


# ------------------------------------------------------------------------- real processes


def _config(tmp_path: Path, source: str, function: str, mode: str = "prod") -> Path:
    (tmp_path / "fnmod.py").write_text(source)
    cfg = tmp_path / "wrapper.json"
    cfg.write_text(
        json.dumps(
            {
                "module": "fnmod",
                "function": function,
                "format": "json",
                "working_dir": str(tmp_path),
                "mode": mode,
            }
        )
    )
    return cfg


def _run(
    cfg: Path, stdin: bytes, mode: str, variant: str = "oneshot"
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, str(WRAPPER), "--config", str(cfg), "--variant", variant],
        input=stdin,
        capture_output=True,
        timeout=60,
        env={"MVM_RUN_MODE": mode, "PATH": "/usr/bin:/bin"},
    )


def _envelope(stderr: bytes) -> dict[str, Any]:
    last: dict[str, Any] = json.loads(stderr.strip().splitlines()[-1])
    return last


def test_oneshot_value_on_stdout_not_wrapped(tmp_path: Path) -> None:
    source = "import os\ndef f(x):\n    print('noise')\n    os.write(1, b'raw')\n    return x\n"
    proc = _run(_config(tmp_path, source, "f"), b'[[{"a": [1, 2]}], {}]', "oneshot")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"a": [1, 2]}  # the return value itself
    assert b"noise" in proc.stderr and b"raw" in proc.stderr


def test_oneshot_error_is_an_envelope_on_stderr_and_nonzero_exit(tmp_path: Path) -> None:
    cfg = _config(tmp_path, FAILING, "boom")
    proc = _run(cfg, b'[["/srv/app/data"], {}]', "oneshot")
    assert proc.returncode == 1 and proc.stdout == b""
    assert _envelope(proc.stderr) == {
        "error": {
            "code": w.E_FUNCTION_FAILED,
            "type": "ValueError",
            "message": "ValueError (details withheld in prod images)",
        }
    }
    assert b"Traceback" not in proc.stderr and b"/srv/app" not in proc.stderr
    dev = _run(
        _config(tmp_path, FAILING, "boom", mode="dev"), b'[["/srv/app/data"], {}]', "oneshot"
    )
    assert dev.returncode == 1
    assert "in boom" in _envelope(dev.stderr)["error"]["traceback"]


def test_oneshot_caps_stdin_at_16_mib(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "def f(x):\n    return len(x)\n", "f")
    ok = b'[["' + b"x" * (w.MAX_INPUT - 10) + b'"], {}]'
    assert json.loads(_run(cfg, ok, "oneshot").stdout) == w.MAX_INPUT - 10
    over = _run(cfg, ok + b" " * 11, "oneshot")
    assert over.returncode == 1
    assert _envelope(over.stderr)["error"]["code"] == w.E_INPUT_TOO_LARGE


def test_oneshot_second_invocation_is_a_hard_error(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def f(x):\n    return x\n")
    rt = w.Runtime(
        {"module": "m", "function": "f", "working_dir": str(tmp_path)}, variant="oneshot"
    )
    assert rt.handle(b"[[1], {}]") == (True, b"1")
    ok, out = rt.handle(b"[[2], {}]")
    assert not ok and json.loads(out)["error"]["code"] == w.E_WRAPPER_REUSED


def test_oneshot_variant_refuses_longrunning_mode(tmp_path: Path) -> None:
    proc = _run(_config(tmp_path, "def f(x):\n    return x\n", "f"), b"", "longrunning")
    assert proc.returncode == 2
    assert _envelope(proc.stderr)["error"]["code"] == w.E_WRAPPER_MODE


def test_prod_sets_pr_set_dumpable_0(tmp_path: Path) -> None:
    source = (
        "def f():\n    for line in open('/proc/self/status'):\n"
        "        if line.startswith('CoreDumping') or line.startswith('Name'):\n            pass\n"
        "    import ctypes\n    return ctypes.CDLL(None).prctl(3, 0, 0, 0, 0)\n"  # PR_GET_DUMPABLE
    )
    assert json.loads(_run(_config(tmp_path, source, "f"), b"[[], {}]", "oneshot").stdout) == 0
    dev = _run(_config(tmp_path, source, "f", mode="dev"), b"[[], {}]", "oneshot")
    assert json.loads(dev.stdout) == 1


def test_longrunning_process_serves_framed_requests(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "n = 0\ndef f(x):\n    global n\n    n += 1\n    return [x, n]\n", "f")

    def frame(body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + body

    oversized = struct.pack(">I", w.MAX_INPUT + 1) + b"x" * (w.MAX_INPUT + 1)
    stdin = (
        frame(b"")  # warm-up: loads the function, calls nothing
        + frame(b'[["a"], {}]')
        + frame(b"[[NaN], {}]")
        + oversized
        + frame(b'[["b"], {}]')
    )
    proc = _run(cfg, stdin, "longrunning", variant="longrunning")
    assert proc.returncode == 0, proc.stderr
    out, replies = proc.stdout, []
    while out:
        n, status = struct.unpack(">IB", out[:5])
        replies.append((status, json.loads(out[5 : 5 + n])))
        out = out[5 + n :]
    assert replies[0] == (0, None)
    assert replies[1] == (0, ["a", 1])
    assert replies[2][0] == 1 and replies[2][1]["error"]["code"] == w.E_INPUT_NONFINITE
    assert replies[3][0] == 1 and replies[3][1]["error"]["code"] == w.E_INPUT_TOO_LARGE
    assert replies[4] == (0, ["b", 2])  # same process: state kept
