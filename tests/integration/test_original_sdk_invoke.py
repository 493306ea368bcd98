"""IR emitted by the original product's own SDK (PyPI ``mvm`` 0.15.1, its ``python -m
mvm entry.py`` emit contract) validates, builds offline, boots under QEMU and answers
``mvmctl invoke``: the path a user of the original takes with an existing project.

The SDK comes from PyPI into a cached venv (tests/helpers/original_sdk.py); the test
skips only when PyPI cannot be reached, and says so.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import original_sdk

from .conftest import qemu_pids

MVMCTL = str(Path(sys.executable).with_name("mvmctl"))

# The original SDK's shortcut decorator (workload + app + function entrypoint in one),
# its defaults left alone (image python312, resources 1/256/512, no deps, primary),
# except the source dir, a working_dir of its own and a literal env for the function.
ENTRY = """
import mvm


@mvm.func(
    name="orig",
    module="app",
    source=mvm.local_path("./src"),
    working_dir="/srv/fn",
    env={"GREETING": mvm.literal("hello")},
)
def greet(name: str) -> str:
    return f"hello, {name}"
"""
# The long form: workload + app + entrypoint_function (primary left False, as the
# SDK emits it for a single entrypoint), with a hook, which has no effect here.
LONG_ENTRY = """
import mvm

mvm.workload(id="orig")


@mvm.app(
    name="orig",
    source=mvm.local_path("./src"),
    image=mvm.nix_packages(["python3"]),
    entrypoint=mvm.entrypoint_function(
        module="app",
        function="greet",
        working_dir="/srv/fn",
        env={"GREETING": mvm.literal("hello")},
    ),
    resources=mvm.resources(cpu_cores=1, memory_mb=256, rootfs_size_mb=512),
    dependencies=mvm.no_deps(),
    before_start="echo starting",
)
def greet(name: str) -> str:
    return f"hello, {name}"
"""
# What runs in the guest: the greeting comes from the entrypoint's env, so a reply
# proves the env, the working_dir and the source layout all arrived.
APP_PY = """
import os


def greet(name: str) -> str:
    return f"{os.environ['GREETING']}, {name}"
"""


def mvmctl(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MVMCTL, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.qemu
@pytest.mark.parametrize(
    ("entry", "no_effect"),
    [
        (ENTRY, ["$.apps[0].resources.rootfs_size_mb"]),
        (LONG_ENTRY, ["$.apps[0].hooks", "$.apps[0].resources.rootfs_size_mb"]),
    ],
    ids=["func-shortcut", "long-form"],
)
def test_original_sdk_ir_boots_and_answers_invoke(
    tmp_path: Path, entry: str, no_effect: list[str]
) -> None:
    python = original_sdk.original_python()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text(textwrap.dedent(APP_PY))
    (tmp_path / "entry.py").write_text(textwrap.dedent(entry))
    ir = tmp_path / "workload-ir.json"
    emit = original_sdk.emit(python, tmp_path / "entry.py", ir)
    assert emit.returncode == 0, emit.stderr
    raw = ir.read_text()
    assert '"cpu_cores":1' in raw and '"working_dir":"/srv/fn"' in raw  # the original's shape

    validate = mvmctl("validate", str(ir))
    assert validate.returncode == 0, validate.stderr
    assert validate.stdout.startswith(f"ok: {ir} (ir_hash ")
    warnings = [ln for ln in validate.stderr.splitlines() if ln.startswith("warning: ")]
    assert sorted(w.split(":")[1].strip() for w in warnings) == no_effect

    before = qemu_pids()
    up = mvmctl("up", str(ir), "--name", "orig")
    assert up.returncode == 0, up.stderr
    try:
        out = mvmctl("invoke", "orig", "--input", "name=Alice", timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout == '"hello, Alice"\n'
    finally:
        down = mvmctl("down", "orig")
    assert down.returncode == 0, down.stderr
    assert qemu_pids() == before
