"""-e / --env-file parsing (engine/request/envvars.py) and the request's env field."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from mvm import VmRequest
from mvm.engine.base.errors import ConfigError
from mvm.engine.request.envvars import EnvError, env_kernel_arg, env_script, parse_env


def test_env_file_comments_quotes_and_later_wins(tmp_path: Path) -> None:
    f = tmp_path / "app.env"
    f.write_text(
        "# a comment\n"
        "\n"
        "PLAIN=a b c\n"
        '  DOUBLE="line\\nbreak \\"q\\" $HOME"\n'
        "export SINGLE='$NOT # expanded'\n"
        "EMPTY=\n"
        "EQ=a=b\n"
        "OVER=file\n"
    )
    env = parse_env(["OVER=flag", "FROM_HOST"], [f], lookup={"FROM_HOST": "h"}.get)
    assert env == {
        "PLAIN": "a b c",
        "DOUBLE": 'line\nbreak "q" $HOME',
        "SINGLE": "$NOT # expanded",
        "EMPTY": "",
        "EQ": "a=b",
        "OVER": "flag",
        "FROM_HOST": "h",
    }


def test_every_bad_line_is_reported(tmp_path: Path) -> None:
    f = tmp_path / "bad.env"
    f.write_text('GOOD=1\n1BAD=x\nMVM_ENTRYPOINT_UID=0\nOPEN="never closed\nALSO BAD=2\n')
    with pytest.raises(EnvError) as info:
        parse_env(["-x=1", "UNSET"], [f, tmp_path / "missing.env"])
    lines = [e.one_line() for e in info.value.all_errors]
    assert [e.code for e in info.value.all_errors] == [
        "E_ENV_SPEC",
        "E_ENV_RESERVED",
        "E_ENV_SPEC",
        "E_ENV_SPEC",
        "E_ENV_FILE",
        "E_ENV_SPEC",
        "E_ENV_SPEC",
    ]
    assert lines[0].startswith(f"error[E_ENV_SPEC]: {f}:2: '1BAD'")
    assert f"{f}:3: MVM_ENTRYPOINT_UID is reserved" in lines[1]
    assert f'{f}:4: unterminated " quote' in lines[2]
    assert f"{f}:5: 'ALSO BAD'" in lines[3]
    assert "missing.env" in lines[4]
    assert "-e -x=1" in lines[5]
    assert "UNSET has no value" in lines[6]
    assert all("\n" not in line for line in lines)


def test_kernel_arg_decodes_to_a_script_the_shell_loads_verbatim(tmp_path: Path) -> None:
    env = {"A": 'it\'s $HOME `x` "q"', "B": "two\nlines"}
    arg = env_kernel_arg(env)
    assert arg.startswith("mvm.env=") and " " not in arg
    script = base64.b64decode(arg.removeprefix("mvm.env=")).decode()
    assert script == env_script(env)
    (tmp_path / "env").write_text(script)
    out = subprocess.run(
        ["/bin/busybox", "sh", "-c", f"set -a; . {tmp_path}/env; set +a; env -0"],
        capture_output=True,
        check=True,
        env={"PATH": "/bin"},
    ).stdout.split(b"\0")
    assert b'A=it\'s $HOME `x` "q"' in out
    assert b"B=two\nlines" in out
    assert env_kernel_arg({}) == ""


def test_too_large_env_is_refused_with_a_code() -> None:
    with pytest.raises(ConfigError) as info:
        env_kernel_arg({"BIG": "x" * 4000})
    assert info.value.code == "E_ENV_TOO_LARGE"


def test_vm_request_takes_a_dict_and_checks_it() -> None:
    req = VmRequest(name="a", image_dir="/x", env={"K": "v", "L": "w"})
    assert req.env == (("K", "v"), ("L", "w"))
    with pytest.raises(EnvError) as info:
        VmRequest(name="a", image_dir="/x", env={"MVM_SEALED": "0", "bad key": "1"})
    assert [e.code for e in info.value.all_errors] == ["E_ENV_RESERVED", "E_ENV_SPEC"]


def test_cli_prints_one_coded_line_per_bad_variable(tmp_path: Path) -> None:
    import sys

    bad = tmp_path / "bad.env"
    bad.write_text("# ok\nGOOD=1\nno equals sign here\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "mvm.cli",
            "up",
            "demo",
            "-e",
            "1BAD=x",
            "-e",
            "MVM_X=1",
            "--env-file",
            str(bad),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert [line.split("]")[0] for line in lines] == [
        "error[E_ENV_SPEC",
        "error[E_ENV_SPEC",
        "error[E_ENV_RESERVED",
    ], out.stderr
    assert f"{bad}:3" in lines[0]
