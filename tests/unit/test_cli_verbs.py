"""The lifecycle verbs' pure parts: --version, completion scripts made from the argparse
tree, ``run IMAGE -- CMD`` parsing, the ps alias, signals, and start's request rebuilt
from a VM's recorded spec."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from mvm.cli.app import build_parser, parse
from mvm.cli.completion import command_paths, script
from mvm.cli.verb_commands import parse_signal, request_from_record
from mvm.engine.base.errors import ConfigError
from mvm.engine.store import VmRecord


def test_version_is_the_distributions() -> None:
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "mvm.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"mvmctl {version('mvm-engine')}\n"


def _bash_complete(words: list[str]) -> list[str]:
    """What the generated bash script offers for ``words`` (the last one is the cursor's)."""
    body = script(build_parser(), "bash")
    quoted = " ".join(f"'{w}'" for w in words)
    probe = f"{body}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _mvmctl\n"
    probe += 'printf "%s\\n" "${COMPREPLY[@]}"\n'
    proc = subprocess.run(
        ["bash", "--norc", "-c", probe], capture_output=True, text=True, timeout=30, check=True
    )
    return proc.stdout.split()


def test_bash_completion_offers_commands_subcommands_flags_and_choices() -> None:
    assert set(_bash_complete(["mvmctl", "st"])) == {"status", "stop", "start"}
    assert "ps" in _bash_complete(["mvmctl", "p"])
    assert "build" in _bash_complete(["mvmctl", "kernel", ""])  # a nested subcommand
    assert set(_bash_complete(["mvmctl", "completion", ""])) >= {"bash", "zsh", "fish"}
    run_flags = _bash_complete(["mvmctl", "--log-json", "run", "--a"])
    assert run_flags == ["--attached"]
    assert "--force" in _bash_complete(["mvmctl", "rm", "-f", "x", "--"])
    # ps parses as ls, so it completes ls's flags
    assert "--json" in _bash_complete(["mvmctl", "ps", "--"])


def test_every_shell_script_names_every_command_path() -> None:
    parser = build_parser()
    paths = command_paths(parser)
    assert {"mvmctl", "mvmctl kernel", "mvmctl rm", "mvmctl completion"} <= set(paths)
    commands = paths["mvmctl"][0]
    for verb in ("stop", "start", "restart", "rm", "kill", "inspect", "ps", "completion"):
        assert verb in commands
    for shell in ("bash", "zsh", "fish"):
        text = script(parser, shell)
        for path in paths:
            assert f"'{path}'" in text, (shell, path)
    proc = subprocess.run(
        ["bash", "-n"], input=script(parser, "bash"), text=True, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_command_prints_the_script(shell: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "mvm.cli", "completion", shell],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == script(build_parser(), shell)
    bad = subprocess.run(
        [sys.executable, "-P", "-m", "mvm.cli", "completion", "tcsh"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_completion_follows_the_tree() -> None:
    """A command added to the tree shows up: nothing is listed by hand."""
    parser = argparse.ArgumentParser(prog="mvmctl")
    sub = parser.add_subparsers()
    p = sub.add_parser("frobnicate")
    p.add_argument("--level", choices=("low", "high"))
    p.add_argument("mode", choices=("fast", "slow"))
    paths = command_paths(parser)
    assert paths["mvmctl"][0] == ["frobnicate"]
    assert set(paths["mvmctl frobnicate"][1]) >= {"--level", "fast", "slow", "--help"}


def test_run_takes_a_guest_command_after_double_dash() -> None:
    parser = build_parser()
    args = parse(parser, ["run", "--attached", "demo", "--", "sh", "-c", "exit 7", "--name", "x"])
    assert (args.image, args.attached, args.name) == ("demo", True, None)
    assert args.cmd == ["sh", "-c", "exit 7", "--name", "x"]
    args = parse(parser, ["--log-level", "debug", "run", "--", "ls", "--", "-l"])
    assert args.image is None and args.cmd == ["ls", "--", "-l"]
    assert parse(parser, ["up", "demo"]).cmd == []
    # other commands keep their own handling of `--`
    args = parse(parser, ["exec", "vm1", "--", "ls", "-l"])
    assert args.name == "vm1" and not hasattr(args, "cmd")


def test_ps_is_ls_and_inspect_is_a_verb() -> None:
    parser = build_parser()
    ps, ls = parser.parse_args(["ps", "--json"]), parser.parse_args(["ls", "--json"])
    assert ps.handler == ls.handler and ps.json is True
    assert parser.parse_args(["inspect", "a", "b"]).names == ["a", "b"]
    rm = parser.parse_args(["rm", "-f", "a"])
    assert rm.force is True and rm.handler == "verb_commands:cmd_rm"


def test_signals_by_name_or_number() -> None:
    assert parse_signal("KILL").name == "SIGKILL"
    assert parse_signal("sigterm").name == "SIGTERM"
    assert parse_signal("9").name == "SIGKILL"
    for bad in ("FOO", "999", ""):
        with pytest.raises(ConfigError) as info:
            parse_signal(bad)
        assert info.value.code == "E_SIGNAL"


def test_start_rebuilds_the_request_from_the_recorded_spec(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    spec = {  # RuntimeVM.record_spec's shape
        "image": "/images/demo",
        "ports": ["127.0.0.1:18080->80", "0.0.0.0:2222->22"],
        "vcpus": 2,
        "memory_mib": 512,
        "mode": "attached",
        "volumes": [f"{data}:/mnt/data:64"],
        "net": "none",
        "ip": None,
        "snapshot": None,
        "health_action": "restart-vm",
        "stop_grace_s": 7.0,
        "boot_timeout_s": 120.0,
        "ir_hash": "abc",
    }
    rec = VmRecord(
        name="web1", backend="qemu", mode="attached", state="exited", pid=None,
        pid_start_time=None, run_dir=str(tmp_path / "run"), image="/images/demo", sealed=True,
        created_at=1.0, started_at=2.0, exited_at=3.0, exit_code=0, exit_reason="stopped",
        control_socket=None, agent_socket=None, console_log=None,
        spec_json=json.dumps(spec), owner=None,
    )  # fmt: skip
    req = request_from_record(rec)
    assert req.name == "web1" and req.image_dir == "/images/demo" and req.backend == "qemu"
    assert req.mode == "detached"
    assert [str(p) for p in req.ports] == spec["ports"]
    assert [str(v) for v in req.volumes] == spec["volumes"]
    assert req.volumes[0].size_mb == 64 and not req.volumes[0].read_only
    assert (req.vcpus, req.memory_mib, req.health_action) == (2, 512, "restart-vm")
    assert (req.stop_grace_s, req.boot_timeout_s, req.ir_hash) == (7.0, 120.0, "abc")


def test_a_verb_reports_every_name_it_could_not_handle() -> None:
    proc = subprocess.run(
        [sys.executable, "-P", "-m", "mvm.cli", "stop", "nope-a", "nope-b"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 1, proc.stderr
    assert lines == [
        "error[E_VM_NOT_FOUND]: no VM named 'nope-a' (see mvmctl ls)",
        "error[E_VM_NOT_FOUND]: no VM named 'nope-b' (see mvmctl ls)",
    ]
    bad = subprocess.run(
        [sys.executable, "-P", "-m", "mvm.cli", "kill", "-s", "NOPE", "x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode != 0 and bad.stderr.startswith("error[E_SIGNAL]"), bad.stderr
