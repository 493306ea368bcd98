"""The guest function wrapper: strict decoder, envelopes, prod stripping, both modes.

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
    """A runtime for the hello app, or for ``source`` as a fresh module (never cached)."""
    app_dir = HELLO / "src"
    if source is not None:
        app_dir = tmp_path / "app"
        app_dir.mkdir(exist_ok=True)
        name = f"fnmod{next(_modules)}"
        (app_dir / f"{name}.py").write_text(source)
        cfg.setdefault("module", name)
    config = {"module": "app", "function": "greet", "app_dir": str(app_dir), "mode": mode}
    config.update(cfg)
    return w.Runtime(config)


def _reply(runtime: w.Runtime, body: bytes) -> dict[str, Any]:
    out = runtime.handle(body)
    decoded: dict[str, Any] = json.loads(out)
    return decoded


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
            "message": "ValueError: cannot open <path>",
        },
    }


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


def _assert_envelope(out: bytes) -> None:
    reply = json.loads(out)
    assert isinstance(reply, dict) and isinstance(reply["ok"], bool)
    if not reply["ok"]:
        assert reply["error"]["code"] in CODES
        assert isinstance(reply["error"]["message"], str)


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
    {"module": "app", "function": "greet", "app_dir": str(HELLO / "src"), "mode": "prod"}
)


# ------------------------------------------------------------------------- real processes


def _config(tmp_path: Path, source: str, function: str) -> Path:
    (tmp_path / "fnmod.py").write_text(source)
    cfg = tmp_path / "runtime.json"
    cfg.write_text(json.dumps({"module": "fnmod", "function": function, "app_dir": str(tmp_path)}))
    return cfg


def test_oneshot_process_keeps_user_prints_off_the_reply(tmp_path: Path) -> None:
    source = "import os\ndef f(x):\n    print('noise')\n    os.write(1, b'raw')\n    return x\n"
    cfg = _config(tmp_path, source, "f")
    proc = subprocess.run(
        [sys.executable, str(WRAPPER), "--config", str(cfg)],
        input=b'[[{"a": [1, 2]}], {}]',
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"ok": True, "result": {"a": [1, 2]}}
    assert b"noise" in proc.stderr and b"raw" in proc.stderr


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
    proc = subprocess.run(
        [sys.executable, str(WRAPPER), "--config", str(cfg), "--mode", "longrunning"],
        input=stdin,
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out, replies = proc.stdout, []
    while out:
        (n,) = struct.unpack(">I", out[:4])
        replies.append(json.loads(out[4 : 4 + n]))
        out = out[4 + n :]
    assert replies[0] == {"ok": True, "result": None}
    assert replies[1] == {"ok": True, "result": ["a", 1]}
    assert replies[2]["error"]["code"] == w.E_INPUT_NONFINITE
    assert replies[3]["error"]["code"] == w.E_INPUT_TOO_LARGE
    assert replies[4] == {"ok": True, "result": ["b", 2]}  # same process: state kept
