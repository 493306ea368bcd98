"""One ``Settings`` value read at the edge (DESIGN §4, issue 13).

* No module of the library below the edge reads ``os.environ`` (an ast walk over the
  installed engine/, actors/, backends/; the guest-side wrapper and settings.py itself
  excepted). Copying the environment for a subprocess is allowed.
* ``Settings.from_env`` validates once and reports every bad variable.
* ``MVM_ACCEL=bogus mvmctl run demo`` / ``mvmctl ls``: one coded line, no traceback
  (it used to reach ``Accel(os.environ[...])`` inside the boot and print a traceback).
* ``Engine.open(home=...)`` uses that home, and the environment's child processes see it.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import mvm.actors
import mvm.backends
import mvm.engine
from mvm.engine.base.errors import ConfigError, SettingsError
from mvm.engine.base.paths import db_path, mvm_home
from mvm.engine.base.settings import (
    Accel,
    Settings,
    child_environ,
    current_settings,
    use_settings,
)

MVMCTL = Path(sys.executable).with_name("mvmctl")
ALLOWED = {("backends", "guest", "wrapper.py"), ("engine", "base", "settings.py")}
# Methods of os.environ that only copy it (for a subprocess's env=): allowed.
_COPYING = {"items", "copy", "keys", "values"}


def _is_environ(node: ast.AST) -> bool:
    return _is_os(node, "environ", "environb")


def _is_os(node: ast.AST, *names: str) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr in names
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
    )


def _reads(node: ast.AST) -> bool:
    """Whether ``node`` reads a variable from the environment."""
    if isinstance(node, ast.Subscript):
        return _is_environ(node.value)  # os.environ["X"]
    if isinstance(node, ast.Attribute):
        if _is_environ(node.value):  # .get / .pop / .setdefault / .__getitem__ ...
            return node.attr not in _COPYING
        return _is_os(node, "getenv", "getenvb")
    if isinstance(node, ast.Compare):  # "X" in os.environ
        return any(isinstance(op, ast.In | ast.NotIn) for op in node.ops) and any(
            _is_environ(c) for c in node.comparators
        )
    if isinstance(node, ast.ImportFrom) and node.module == "os":
        return any(a.name in ("environ", "environb", "getenv", "getenvb") for a in node.names)
    return False


def environ_reads(source: str) -> list[int]:
    """Line numbers where ``source`` reads a variable from the environment."""
    return sorted({node.lineno for node in ast.walk(ast.parse(source)) if _reads(node)})  # type: ignore[attr-defined]


def test_the_checker_sees_every_form_of_read() -> None:
    source = "\n".join(
        [
            "import os",
            "a = os.environ['MVM_HOME']",
            "b = os.environ.get('MVM_HOME')",
            "c = 'MVM_HOME' in os.environ",
            "d = os.getenv('MVM_HOME')",
            "from os import environ",
            "e = os.environ.setdefault('X', '1')",
            "env = dict(os.environ)",  # a copy for a subprocess: fine
            "env2 = {**os.environ, 'A': '1'}",  # fine
            "env3 = {k: v for k, v in os.environ.items()}",  # fine
        ]
    )
    assert environ_reads(source) == [2, 3, 4, 5, 6, 7]


def test_nothing_below_the_edge_reads_the_environment() -> None:
    offenders: list[str] = []
    roots = {
        "engine": Path(mvm.engine.__file__).parent,
        "actors": Path(mvm.actors.__file__).parent,
        "backends": Path(mvm.backends.__file__).parent,
    }
    scanned = 0
    for top, root in roots.items():
        for path in sorted(root.rglob("*.py")):
            rel = (top, *path.relative_to(root).parts)
            if rel in ALLOWED:
                continue
            scanned += 1
            for line in environ_reads(path.read_text()):
                offenders.append(f"{'/'.join(rel)}:{line}")
    assert scanned > 50
    assert offenders == [], "read current_settings() instead of os.environ: " + ", ".join(offenders)


def test_from_env_reads_and_types_every_variable(tmp_path: Path) -> None:
    env = {
        "MVM_HOME": str(tmp_path / "h"),
        "XDG_CACHE_HOME": str(tmp_path / "xdg"),
        "MVM_ACCEL": " TCG ",
        "MVM_KERNEL": "/k/vmlinux",
        "MVM_KERNEL_JOBS": "3",
        "MVM_NET_BRIDGE": "br-x",
        "MVM_BUILDER_SSH": "me@host:2222",
        "MVM_FIRECRACKER": "/opt/fc",
        "MVM_FAKE_SEALED": "1",
        "MVM_BACKEND_PLUGINS": "fake=a:b",
    }
    s = Settings.from_env(env)
    assert s.home == tmp_path / "h"
    assert s.cache == tmp_path / "xdg" / "mvm"
    assert s.accel is Accel.TCG
    assert s.kernel == Path("/k/vmlinux") and s.kernel_jobs == 3
    assert s.net_bridge == "br-x" and s.net_subnet == "172.16.0.0/24"
    assert s.builder_ssh == "me@host:2222" and s.builder_nix == "nix"
    assert dict(s.binaries) == {"firecracker": Path("/opt/fc")}
    assert s.fake_sealed and s.backend_plugins == "fake=a:b"
    assert Settings.from_env({**env, "MVM_CACHE": "/c"}).cache == Path("/c")
    # round trip through a child's environment (the shim is an edge of its own)
    assert Settings.from_env(s.to_env()) == s
    assert dict(Settings.from_env(s.to_env()).binaries) == dict(s.binaries)


def test_every_bad_variable_is_reported_with_its_code() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"MVM_ACCEL": "bogus", "MVM_KERNEL_JOBS": "many"})
    err = info.value
    assert isinstance(err, ConfigError) and err.code == "E_ACCEL"
    assert [e.code for e in err.all_errors] == ["E_ACCEL", "E_KERNEL_JOBS"]
    assert "auto, kvm, tcg" in err.all_errors[0].one_line()


def test_installed_settings_win_over_the_environment(tmp_path: Path) -> None:
    assert mvm_home() == Path(os.environ["MVM_HOME"])  # nothing installed: the environment
    mine = Settings(home=tmp_path / "mine", cache=tmp_path / "cache")
    with use_settings(mine):
        assert current_settings() is mine
        assert db_path() == tmp_path / "mine" / "state.db"
        child = child_environ()
        assert child["MVM_HOME"] == str(tmp_path / "mine")
        assert "MVM_ACCEL" not in child
    assert mvm_home() == Path(os.environ["MVM_HOME"])


async def test_settings_follow_tasks_and_worker_threads(tmp_path: Path) -> None:
    mine = Settings(home=tmp_path / "t")
    seen: list[Path] = []

    async def task() -> None:
        seen.append(mvm_home())
        seen.append(await anyio.to_thread.run_sync(mvm_home))

    with use_settings(mine):
        async with anyio.create_task_group() as tg:
            tg.start_soon(task)
    assert seen == [tmp_path / "t", tmp_path / "t"]


def _mvmctl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MVMCTL), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
    )


@pytest.mark.parametrize("argv", [("run", "demo"), ("ls",)])
def test_bad_accel_is_one_coded_line_not_a_traceback(argv: tuple[str, ...]) -> None:
    out = _mvmctl(*argv, MVM_ACCEL="bogus", MVM_KERNEL_JOBS="0")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == [
        "error[E_ACCEL]",
        "error[E_KERNEL_JOBS]",
    ], out.stderr
    assert "'bogus' is not one of auto, kvm, tcg" in lines[0]


def test_good_accel_still_lets_ls_run() -> None:
    out = _mvmctl("ls", MVM_ACCEL="tcg")
    assert out.returncode == 0, out.stderr
